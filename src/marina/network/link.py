"""A link model: how long a round's messages take on links of a given rate (``link_time_s``).

Topology (as :mod:`marina.network.torch_distributed` sends them on gloo): W ranks, each with
its own full-duplex link of rate R bits/s (and one-way latency L) to a switch, every
aggregation one all-gather of the per-rank payloads, padded to the largest rank's c bytes,
plus, only where message sizes vary (Bernoulli), an all-gather of 8 s bytes of sizes first. In
an all-gather every rank's chunk must leave its link towards the W - 1 others, so each rank's
link carries (W - 1) chunks whatever the algorithm. Chunks of up to :data:`DIRECT_MAX_BYTES`
go by a direct exchange (every rank sends its chunk to the W - 1 others at once: one latency),
larger ones by the ring (W - 1 steps of one chunk each, all links busy at once; NCCL always):

    t(all-gather of c bytes) = (W - 1) frames(c) 8 / R + s L,   s = 1 (direct) or W - 1 (ring),
    frames(c) = c + ceil(c / MSS) H,   MSS = 1448 bytes, H = 66 bytes

(TCP over IPv4 with timestamps on Ethernet: 14 + 20 + 32 header bytes per segment of at most
1448 payload bytes; what ``tc tbf`` on a veth counts). A round's ``link_time_s`` is the sum over
its aggregations; W = 1 costs nothing. The simulation models one worker per rank (W = n: the
setting of ``benchmarks/link.py``), the torch.distributed backend its real world size and
blocks. Not modelled: local computation, metric exchanges (the runner's log points, see
``TorchDistributedNetwork.gather``), TCP slow start and the ACKs that share a link's other
direction. ``benchmarks/link.py`` compares this model with shaped links.

Spec: ``"<rate><unit>[:<latency><unit>]"``, rate units as ``tc`` writes them (decimal):
``bit``, ``kbit``, ``mbit``, ``gbit`` (e.g. ``"100mbit"``, ``"1gbit:50us"``); latency units
``s``, ``ms``, ``us``. Rates must be in [:data:`MIN_RATE_BPS`, :data:`MAX_RATE_BPS`] and
latencies in [0, :data:`MAX_LATENCY_S`], so every modelled time is a finite number (a rate of
1e400 would be infinite and make every round take no time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from marina.errors import ConfigError

__all__ = [
    "Link",
    "parse_link",
    "DIRECT_MAX_BYTES",
    "FRAME_HEADER_BYTES",
    "MSS_BYTES",
]

MSS_BYTES = 1448
"""TCP payload bytes per segment (1500-byte MTU, IPv4, TCP timestamps)."""
FRAME_HEADER_BYTES = 66
"""Ethernet (14) + IPv4 (20) + TCP with timestamps (32) bytes per segment."""
DIRECT_MAX_BYTES = 1 << 16
"""Largest per-rank chunk that gloo aggregations send by a direct exchange rather than the ring
all-gather (``benchmarks/collectives.py``, 4 ranks on loopback: direct 1.5-2x faster for chunks
of a few bytes to 128 KB, slower for 400 KB and more)."""

MIN_RATE_BPS = 1.0
"""Slowest link rate modelled (bits per second)."""
MAX_RATE_BPS = 1e15
"""Fastest link rate modelled (1000 Tbit/s, beyond any link)."""
MAX_LATENCY_S = 3600.0
"""Longest one-way latency modelled (seconds)."""

_RATES = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6}
_NUMBER = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)"


@dataclass(frozen=True)
class Link:
    """Every rank's link: ``rate_bps`` bits per second, ``latency_s`` per collective step."""

    rate_bps: float
    latency_s: float = 0.0
    spec: str = ""

    @staticmethod
    def frame_bytes(payload: int) -> int:
        """Bytes a link carries for ``payload`` bytes of one message (headers per segment)."""
        payload = int(payload)
        return payload + math.ceil(payload / MSS_BYTES) * FRAME_HEADER_BYTES

    def all_gather_s(self, world: int, chunk_bytes: int) -> float:
        """(W - 1) frames(c) 8 / R + s L: an all-gather of ``chunk_bytes`` from every rank, in
        s = 1 step up to :data:`DIRECT_MAX_BYTES` (direct exchange), else s = W - 1 (ring)."""
        if world <= 1 or chunk_bytes <= 0:
            return 0.0
        steps = 1 if chunk_bytes <= DIRECT_MAX_BYTES else world - 1
        return (world - 1) * 8.0 * self.frame_bytes(chunk_bytes) / self.rate_bps + steps * self.latency_s

    def aggregation_s(self, world: int, chunk_bytes: int, size_slots: int = 0) -> float:
        """One aggregation: the size all-gather (``size_slots`` int64 per rank, if any), then
        the payload all-gather of ``chunk_bytes`` (the largest rank's padded payload)."""
        return self.all_gather_s(world, 8 * int(size_slots)) + self.all_gather_s(world, chunk_bytes)


def parse_link(spec: str | Link | None) -> Link | None:
    """``"100mbit"``, ``"10mbit:2ms"``, ... -> :class:`Link` (None and a Link pass through).

    Raises:
        ConfigError: naming the spec and the accepted form.
    """
    if spec is None or isinstance(spec, Link):
        return spec
    text = str(spec).strip().lower()
    rate, sep, latency = text.partition(":")
    form = "'<rate><bit|kbit|mbit|gbit>[:<latency><s|ms|us>]', e.g. '100mbit' or '1gbit:50us'"
    m = re.fullmatch(_NUMBER + r"(bit|kbit|mbit|gbit)", rate.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"link == {spec!r}, must be {form} with a rate > 0")
    rate_bps = float(m.group(1)) * _RATES[m.group(2)]
    if not MIN_RATE_BPS <= rate_bps <= MAX_RATE_BPS:
        raise ConfigError(
            f"link == {spec!r}: rate {rate_bps:g} bit/s, "
            f"must be in [{MIN_RATE_BPS:g}, {MAX_RATE_BPS:g}] bit/s"
        )
    lat = 0.0
    if sep:
        t = re.fullmatch(_NUMBER + r"(s|ms|us)", latency.strip())
        if t is None:
            raise ConfigError(f"link == {spec!r}: latency {latency!r}, must be {form} with a latency >= 0")
        lat = float(t.group(1)) / _PER_SECOND[t.group(2)]
        if not lat <= MAX_LATENCY_S:
            raise ConfigError(f"link == {spec!r}: latency {lat:g} s, must be in [0, {MAX_LATENCY_S:g}] s")
    return Link(rate_bps, lat, text)
