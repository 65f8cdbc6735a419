"""TPU accelerator types: chips per slice, the runtime version each family needs, the zones offering it.

Facts from the Cloud TPU documentation (TPU versions, runtime versions, regions and zones pages):
a `v5litepod-N` / `v6e-N` type names N chips; a `v5p-N` / `v4-N` type names N TensorCores, 2 per chip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moe_jax.errors import UserError

# family -> TensorCores per chip (the N in '<family>-N' counts cores for v4/v5p, chips for v5e/v6e)
CORES_PER_CHIP = {"v5litepod": 1, "v6e": 1, "v5p": 2, "v4": 2}

# family -> the TPU VM software version (`--runtime-version`) that family boots with
RUNTIME_VERSIONS = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
    "v4": "tpu-ubuntu2204-base",
}

# family -> zones that offer it (TPU regions and zones page); a settings file's [zones] table overrides
DEFAULT_ZONES = {
    "v5litepod": ("us-central1-a", "us-south1-a", "us-west1-c", "us-west4-a", "europe-west4-b", "asia-southeast1-b"),
    "v5p": ("us-central1-a", "us-east5-a", "europe-west4-b"),
    "v6e": ("us-central1-b", "us-east1-d", "us-east5-a", "us-east5-b", "europe-west4-a", "asia-northeast1-b"),
    "v4": ("us-central2-b",),
}


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(2**k for k in range(low.bit_length() - 1, high.bit_length()))


# family -> the N of '<family>-N' one slice may have (supported-configurations pages: v5e/v6e slices of
# 1–256 chips; v5p and v4 N counts cores, 2 per chip, from 8 up to the largest single slice);
# a settings file's [sizes] table overrides a family's list
DEFAULT_SIZES = {
    "v5litepod": (1, 4, 8, 16, 32, 64, 128, 256),
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
    "v5p": (*_powers_of_two(8, 8192), 12288),  # 12288: the 16x16x24 shape, 6144 chips
    "v4": _powers_of_two(8, 8192),  # a v4 pod: 4096 chips
}

_TYPE = re.compile(r"(?P<family>[a-z0-9]+?)-(?P<n>[0-9]+)")


@dataclass(frozen=True)
class Accelerator:
    """One slice type, e.g. Accelerator('v5litepod', 16) for `v5litepod-16`."""

    family: str
    size: int  # the N of '<family>-N'

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}"

    @property
    def chips(self) -> int:
        """JAX devices in the slice (one per chip)."""
        return self.size // CORES_PER_CHIP[self.family]


def parse_accelerator(text: str) -> Accelerator:
    """'v5p-32' -> Accelerator('v5p', 32); UserError naming the valid forms otherwise."""
    valid = ", ".join(f"{f}-N" for f in CORES_PER_CHIP)
    match = _TYPE.fullmatch(text or "")
    if not match or match["family"] not in CORES_PER_CHIP or int(match["n"]) < 1:
        raise UserError(f"unknown accelerator type {text!r}; use one of {valid} (e.g. v5litepod-16)")
    accelerator = Accelerator(match["family"], int(match["n"]))
    if accelerator.size % CORES_PER_CHIP[accelerator.family]:
        raise UserError(f"accelerator type {text!r} names {accelerator.size} TensorCores, but a "
                        f"{accelerator.family} chip has {CORES_PER_CHIP[accelerator.family]}; use an even N")
    return accelerator


def check_runtime_version(accelerator: Accelerator, runtime_version: str) -> None:
    """UserError unless `runtime_version` is the one the accelerator's family boots with."""
    expected = RUNTIME_VERSIONS[accelerator.family]
    if runtime_version != expected:
        raise UserError(f"runtime version {runtime_version!r} does not match {accelerator.name}; "
                        f"{accelerator.family} slices need {expected!r}")


def check_zone(accelerator: Accelerator, zone: str, zones: dict[str, tuple[str, ...]]) -> None:
    """UserError unless `zone` offers the accelerator's family (`zones`: family -> zones)."""
    offered = zones.get(accelerator.family, ())
    if zone not in offered:
        raise UserError(f"zone {zone!r} does not offer {accelerator.family} TPUs; use one of {', '.join(offered)} "
                        f"(or list the zone under [zones] in the settings file)")


def check_size(accelerator: Accelerator, sizes: dict[str, tuple[int, ...]]) -> None:
    """UserError unless the accelerator's N is a slice size its family offers (`sizes`: family -> sizes)."""
    offered = sizes.get(accelerator.family, ())
    if accelerator.size not in offered:
        raise UserError(f"no {accelerator.family} slice of size {accelerator.size} ({accelerator.name!r}); use "
                        f"{accelerator.family}-N with N one of {', '.join(map(str, offered))} "
                        f"(or list the size under [sizes] in the settings file)")
