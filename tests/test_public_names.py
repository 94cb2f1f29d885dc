"""The public surface: each module's ``__all__`` equals the snapshot in tests/data/public_names.json,
so a name enters or leaves the surface only on purpose, and the names taken out of ``__all__``
stay importable.

After a deliberate change of an ``__all__``, rewrite the snapshot and commit it with the change:

    python tests/test_public_names.py
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import marina

SNAPSHOT = Path(__file__).parent / "data" / "public_names.json"


def module_names() -> list[str]:
    """Every module of the package (``marina.__main__`` runs the CLI when imported: left out)."""
    found = ["marina"] + [m.name for m in pkgutil.walk_packages(marina.__path__, "marina.")]
    return sorted(name for name in found if not name.endswith("__main__"))


def public_names() -> dict[str, list[str] | None]:
    """module -> its ``__all__`` (in its order), None for a module without one."""
    out: dict[str, list[str] | None] = {}
    for name in module_names():
        names = getattr(importlib.import_module(name), "__all__", None)
        out[name] = None if names is None else list(names)
    return out


def test_public_names_match_the_snapshot():
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["modules"]
    current = public_names()
    changed = {
        name: {"added": sorted(set(now or []) - set(recorded.get(name) or [])),
               "removed": sorted(set(recorded.get(name) or []) - set(now or []))}
        for name, now in current.items()
        if now != recorded.get(name)
    }  # fmt: skip
    gone = sorted(set(recorded) - set(current))
    assert not changed and not gone, (
        f"public names changed: {changed}, modules gone: {gone}; if on purpose, run "
        "`python tests/test_public_names.py` and commit tests/data/public_names.json"
    )


def test_every_public_name_exists():
    missing = [
        f"{module}.{name}"
        for module, names in public_names().items()
        for name in names or []
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing == []


def test_names_out_of_all_stay_importable():
    kept = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["importable_not_public"]
    missing = [
        f"{module}.{name}"
        for module, names in kept.items()
        for name in names
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing == []


def write_snapshot() -> None:
    """Rewrite the snapshot's modules from the package (the importable list is kept as is)."""
    old = json.loads(SNAPSHOT.read_text(encoding="utf-8")) if SNAPSHOT.exists() else {}
    data = {
        "modules": public_names(),
        "importable_not_public": old.get("importable_not_public", {}),
    }
    SNAPSHOT.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_snapshot()
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
