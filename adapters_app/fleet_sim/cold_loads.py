"""How long a load takes, by where the adapter comes from: the figures `bench-serving`
measured, and the assumptions it could not measure, each named as such.

`manage.py bench_serving` times one thing per base (README "Serving",
docs/results/bench-serving-*.txt): ours, "store read + sha256 check + copy into the
bank", from a local `AdapterStore` with the page cache warm. That is what a load from a
worker's local disk costs (the disk tier is an `AdapterStore` of its own, read and
verified the same way) and it is the only measured figure:

  smollm2-135m  payload 9,594 KiB (rank 8, all 210 linear modules)  p50 37.63 ms  p95 67.74 ms
                docs/results/bench-serving-smollm2-135m.txt
  mint-s        payload 328 KiB (rank 8, all 28 linear modules)      p50 3.80 ms   p95 4.87 ms
                docs/results/bench-serving-all-linear.txt

A load from the shared store is that plus the trip: a first-byte latency and the payload
at a per-stream bandwidth, both assumed (no bench here measures an object store across
a network; SeaweedFS on the same host says nothing about one). A move from the cpu tier
to a GPU is the payload at a host-to-device bandwidth, assumed too: no GPU run has been
made (README "On a GPU"). Every figure is a flag of `manage.py bench_fleet`.

Samples are log-normal with the measured p50 as median and the p95 where it was
measured (sigma = ln(p95 / p50) / 1.645); the assumed parts are constants.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

MIB = 1024 * 1024

DEVICE, CPU, DISK, STORE = "device", "cpu", "disk", "store"  # residency.py's tiers


@dataclass(frozen=True, slots=True)
class ColdLoadTimes:
    base: str
    payload_bytes: int
    local_p50_ms: float  # measured: local read + sha256 + copy into the bank
    local_p95_ms: float
    measured_in: str
    store_first_byte_ms: float = 20.0  # assumed
    store_mib_per_s: float = 200.0  # assumed, one stream
    host_to_gpu_gib_per_s: float = 10.0  # assumed, PCIe

    def sampler(self, seed: int) -> LoadSampler:
        return LoadSampler(self, seed)

    def describe(self) -> list[str]:
        return [
            f"payload {self.payload_bytes / 1024:,.0f} KiB ({self.base}, rank 8, all-linear); "
            f"a load from the local disk: p50 {self.local_p50_ms:g} ms, p95 {self.local_p95_ms:g} ms, "
            f"measured by bench-serving ({self.measured_in})",
            f"from the store: that + {self.store_first_byte_ms:g} ms first byte + the payload at "
            f"{self.store_mib_per_s:g} MiB/s (assumed); cpu tier -> GPU: the payload at "
            f"{self.host_to_gpu_gib_per_s:g} GiB/s (assumed)",
        ]


MEASURED = {
    "smollm2-135m": ColdLoadTimes(
        "smollm2-135m", 9594 * 1024, 37.63, 67.74, "docs/results/bench-serving-smollm2-135m.txt"
    ),
    "mint-s": ColdLoadTimes("mint-s", 328 * 1024, 3.80, 4.87, "docs/results/bench-serving-all-linear.txt"),
}
DEFAULT_BASE = "smollm2-135m"


class LoadSampler:
    """Seconds a load from each tier takes (the device tier: none)."""

    def __init__(self, times: ColdLoadTimes, seed: int):
        self.rng = random.Random(seed)
        self.mu = math.log(times.local_p50_ms / 1000)
        self.sigma = max(0.0, math.log(times.local_p95_ms / times.local_p50_ms) / 1.645)
        self.to_gpu = times.payload_bytes / (times.host_to_gpu_gib_per_s * 1024 * MIB)
        self.trip = times.store_first_byte_ms / 1000 + times.payload_bytes / (times.store_mib_per_s * MIB)

    def local(self) -> float:
        """A read from the local disk, verified and parsed (the loader's part)."""
        return self.rng.lognormvariate(self.mu, self.sigma)

    def from_store(self) -> float:
        return self.trip + self.local()

    def host_to_gpu(self) -> float:
        return self.to_gpu
