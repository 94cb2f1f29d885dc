"""Shaped links between network namespaces, for the benchmarks that time real links (link.py,
train_links.py).

Topology: one namespace holding a Linux bridge, and one namespace per rank, joined to the bridge
by a veth pair (``SUBNET``.(r+1)/24, device ``e{r}`` in the rank's namespace). :meth:`Namespaces.shape`
puts ``tc tbf`` on both ends of every veth (the rank's upload and its download). Every name
carries this process's id, and every namespace made is removed on exit, also on errors and, with
:func:`exit_on_signals`, on Ctrl-C, SIGTERM and SIGHUP. Nothing outside the namespaces is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from marina.network.link import parse_link

PREFIX = f"mrn{os.getpid()}"
BRIDGE_NS = f"{PREFIX}b"
SUBNET = "10.77.0"
EXIT_NOT_ROOT = 2


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


def rank_ns(r: int) -> str:
    return f"{PREFIX}r{r}"


def require_root(script: str, alternative: str = "") -> None:
    """Exit with status 2 and a message naming what is missing unless this process is root and
    ``ip`` and ``tc`` (iproute2) are on PATH."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if os.geteuid() == 0 and not missing:
        return
    why = "it is not running as root" if os.geteuid() != 0 else f"{' and '.join(missing)} not found"
    print(
        f"{script} needs root and the ip and tc tools (iproute2): it creates network namespaces "
        f"and shapes their links with tc tbf, and {why}; run it as root{alternative}",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_NOT_ROOT)


def exit_on_signals() -> dict:
    """SIGTERM, SIGHUP and SIGINT raise SystemExit, so ``finally`` blocks remove the namespaces;
    returns the previous handlers (for :func:`restore_signals`)."""

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def rank_command(r: int, argv: list[str]) -> list[str]:
    """``argv`` run inside rank ``r``'s namespace."""
    return ["ip", "netns", "exec", rank_ns(r), *argv]


def rank_environ(r: int, world: int, port: int) -> dict[str, str]:
    """torchrun's variables for rank ``r`` talking over its veth (rank 0 at ``SUBNET``.1)."""
    return {
        "RANK": str(r),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": f"{SUBNET}.1",
        "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": f"e{r}",
        "OMP_NUM_THREADS": "1",
    }


def tx_bytes(dev: str) -> int:
    """Bytes sent by ``dev`` in this process's namespace (``/proc/net/dev``)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == dev:
                return int(fields.split()[8])
    raise KeyError(f"no device {dev!r} in /proc/net/dev")


class Namespaces:
    """The bridge and the W rank namespaces; removed on exit whatever happens."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.made: list[str] = []

    def __enter__(self) -> Namespaces:
        try:
            sh("ip", "netns", "add", BRIDGE_NS)
            self.made.append(BRIDGE_NS)
            sh("ip", "-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", BRIDGE_NS, "link", "set", "br0", "up")
            for r in range(self.world):
                ns = rank_ns(r)
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
                sh(
                    "ip",
                    "-n",
                    BRIDGE_NS,
                    "link",
                    "add",
                    f"h{r}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"e{r}",
                    "netns",
                    ns,
                )
                sh("ip", "-n", BRIDGE_NS, "link", "set", f"h{r}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{r + 1}/24", "dev", f"e{r}")
                sh("ip", "-n", ns, "link", "set", f"e{r}", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def shape(self, rate: str | None) -> None:
        """tbf at ``rate`` on both ends of every veth (None: remove the shaping)."""
        for r in range(self.world):
            for ns, dev in ((rank_ns(r), f"e{r}"), (BRIDGE_NS, f"h{r}")):
                if rate is None:
                    sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
                    continue
                bps = parse_link(rate).rate_bps
                # a small bucket: two full frames, or 1 ms of traffic (a larger burst lets the
                # small compressed messages through at the veth's own speed, hiding the rate)
                burst = max(2 * 1514, int(bps / 8 / 1000))
                sh(
                    "tc",
                    "-n",
                    ns,
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    str(burst),
                    "latency",
                    "200ms",
                )

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()


def wait_ranks(
    commands: list[tuple[list[str], dict[str, str]]], logs: list[Path], timeout: float
) -> list[int]:
    """Start one process per (argv, env), output to ``logs``, and return their exit codes once
    all have ended, or once one has failed (a rank that died leaves the others waiting for it in a
    collective: they are killed, code -9), or after ``timeout`` seconds (all killed); whatever
    still runs at the end (an error, a signal) is killed."""
    procs = []
    try:
        for (argv, env), path in zip(commands, logs):
            with open(path, "w") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c for c in codes):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]
