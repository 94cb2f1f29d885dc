"""Packed bytes per accounted byte of RandK messages on the torch-distributed wire.

For randk:K and randk:K:seeded at several dimensions d and K, with one or several workers per
rank (n/W), runs the real aggregation (:class:`marina.network.TorchDistributedNetwork`) in a
one-process gloo group hosting n/W workers and reads its counters: a rank's payload per round
(``payload_bytes``; what every other rank receives from it) over its accounted bits / 8
(``bits_up``). A rank's payload does not depend on W, so the figure holds for any W. Target:
<= 1.1. At one message per rank, ceil(bits/8) bytes is the floor of any byte-granular
collective (randk:1 at d = 10^5: 49 bits in 7 bytes, 1.14); with several messages per rank they
travel back to back at bit level (see :mod:`marina.network.torch_distributed`).

Run: ``python benchmarks/wire_ratio.py``
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from marina import compressors
from marina.network.torch_distributed import TorchDistributedNetwork
from marina.testing import free_port


def ratio(spec: str, d: int, per_rank: int) -> float:
    """Payload bytes / accounted bytes of one aggregation of ``per_rank`` workers' messages."""
    net = TorchDistributedNetwork(per_rank, 0)
    X = torch.linspace(-1.0, 1.0, per_rank * d, dtype=torch.float64).reshape(per_rank, d)
    net.aggregate(compressors.get(spec), X, 0)
    c = net.counters()
    return c["payload_bytes"] / (c["bits_up"] / 8)


def main() -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        print("payload bytes / accounted bytes per rank and round (target <= 1.1)")
        print(f"{'d':>9} {'K':>6} {'seeded':>7} {'n/W = 1':>8} {'n/W = 2':>8} {'n/W = 8':>8}")
        worst = 0.0
        for d in (123, 10**5, 10**6):
            for K in (1, 2, 3, 10, 1000):
                if K > d:
                    continue
                for mode in ("", ":seeded"):
                    r = [ratio(f"randk:{K}{mode}", d, m) for m in (1, 2, 8)]
                    worst = max(worst, *r[1:])
                    print(f"{d:>9} {K:>6} {bool(mode)!s:>7} " + " ".join(f"{v:8.4f}" for v in r))
        print(f"worst ratio with n/W >= 2: {worst:.4f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
