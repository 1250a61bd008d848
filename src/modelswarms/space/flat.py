"""The weight space: the searched tensors of an expert laid end to end in one vector.

A particle is a row of a (particles x parameters) tensor; `FlatSpace` knows which slice of a
row is which tensor, so the swarm does its arithmetic on whole rows and never on dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


class FlatSpace:
    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]]):
        self.slots: list[Slot] = []
        offset = 0
        for name, shape in zip(names, shapes, strict=True):
            numel = 1
            for s in shape:
                numel *= int(s)
            self.slots.append(Slot(name, tuple(int(s) for s in shape), offset, numel))
            offset += numel
        self.dim = offset

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @classmethod
    def select(
        cls,
        tensors: Mapping[str, torch.Tensor],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> FlatSpace:
        """Keep tensors matching any `include` glob (all if none) and no `exclude` glob."""
        names = sorted(
            n for n in tensors
            if (not include or any(fnmatchcase(n, p) for p in include))
            and not any(fnmatchcase(n, p) for p in exclude)
        )
        if not names:
            raise ConfigError(
                f"experts.include={list(include)} / experts.exclude={list(exclude)} select no "
                f"tensor; names look like {next(iter(sorted(tensors)), '(none)')!r}"
            )
        return cls(names, [tensors[n].shape for n in names])

    def flatten(
        self,
        tensors: Mapping[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        out = torch.empty(self.dim, dtype=dtype, device=device)
        for s in self.slots:
            out[s.offset : s.offset + s.numel].copy_(tensors[s.name].reshape(-1))
        return out

    def stack(
        self,
        many: Sequence[Mapping[str, torch.Tensor]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        out = torch.empty(len(many), self.dim, dtype=dtype, device=device)
        for row, tensors in zip(out, many, strict=True):
            row.copy_(self.flatten(tensors, dtype=dtype, device=device))
        return out

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into `vector`, one per searched tensor (clone before keeping them)."""
        if vector.shape != (self.dim,):
            raise ValueError(f"expected a vector of {self.dim} values, got {tuple(vector.shape)}")
        return {
            s.name: vector[s.offset : s.offset + s.numel].view(s.shape) for s in self.slots
        }
