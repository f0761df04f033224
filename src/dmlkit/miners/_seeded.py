"""Miners that draw at random: one seeded generator per device, saved in checkpoints."""

from __future__ import annotations

from typing import Any

import torch

from dmlkit.miners.base import BaseMiner


class SeededMiner(BaseMiner):
    """A miner with ``self.seed`` and a lazily made ``torch.Generator`` per device, whose
    states travel in ``state_dict`` (extra state), so a resumed run draws the same tuples.
    Subclasses set ``self.seed`` and call :meth:`_generator` where they sample."""

    seed: int = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        gens = self.__dict__.setdefault("_generators", {})
        key = str(device)
        if key not in gens:
            gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return gens[key]

    def get_extra_state(self) -> dict[str, Any]:
        """Seed and generator states: a resumed run draws the same tuples."""
        gens = self.__dict__.get("_generators", {})
        return {"seed": self.seed, "generators": {k: g.get_state() for k, g in gens.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        gens: dict[str, torch.Generator] = {}
        for key, rng in state["generators"].items():
            gen = torch.Generator(device=torch.device(key))
            gen.set_state(rng.cpu())
            gens[key] = gen
        self.__dict__["_generators"] = gens
