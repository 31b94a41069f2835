"""The one registry of model variants that Quatrix compares: Q-Compass in its forms and the
attention baselines. The CLI, `quatrix ablate`, the benchmarks and the tests all take their
variants from here, so a new variant is one entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_HEADS = 4  # heads of the multi-head variants unless a caller says otherwise


@dataclass(frozen=True)
class Variant:
    label: str  # for tables and plots
    mixer: str  # QuatrixConfig.mixer
    savo: bool = False  # Q-value content (QuatrixConfig.q_value_content)
    multi_head: bool = False  # takes the caller's head count; single-head otherwise

    def overrides(self, heads: int = DEFAULT_HEADS) -> dict[str, Any]:
        """QuatrixConfig fields that make a config this variant."""
        return {"mixer": self.mixer, "q_value_content": self.savo, "q_heads": heads if self.multi_head else 1}


VARIANTS: dict[str, Variant] = {
    "qcompass": Variant("Q-Compass (SAO)", "qcompass"),
    "savo": Variant("SAVO", "qcompass", savo=True),
    "mh-qcompass": Variant("Q-Compass, multi-head", "qcompass", multi_head=True),
    "mh-savo": Variant("SAVO, multi-head", "qcompass", savo=True, multi_head=True),
    "mha_rank": Variant("attention at rank r", "mha_rank", multi_head=True),
    "mha": Variant("attention, full rank", "mha", multi_head=True),
    "sha": Variant("attention, one head", "mha"),  # Zoology's attention baseline: full rank, one head
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_overrides(name: str, heads: int = DEFAULT_HEADS) -> dict[str, Any]:
    return variant(name).overrides(heads)
