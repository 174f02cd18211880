"""The state of an edit, as snapshots and checkpoints hold it: immutable, so keeping one costs nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import Kind

__all__ = ["KINDS", "EditState", "Steps"]

KINDS: tuple[Kind, Kind] = ("to_k", "to_v")
Steps = tuple[tuple[Tensor, Tensor], ...]
SPACE_PREFIX = "space."  # tensors of another input space's state (names have no dot)


@dataclass(frozen=True)
class EditState:
    """An edit on top of the base weights: what snapshots and checkpoints hold. Never changed in place.

    Attributes:
        maps: the text-side map ``T`` (float64, d × d) per projection kind, ``W_edited = W_base T``.
        layer_weights: the edited weights per projection (float64) for the general ("tensor") path, else ``None``.
        steps: the low-rank steps ``(X, Y)``, ``Tᵢ = I + X Yᵀ``, that made ``maps`` from the identity, in order;
            ``None`` when unknown (a state read from a checkpoint).
        spaces: the edit states of the family's other input spaces (:mod:`rece_lightning.maths.spaces`; this state is the
            token space's), by space name; empty for one-space families and for spaces never edited.
    """

    maps: Mapping[Kind, Tensor]
    layer_weights: Mapping[str, Tensor] | None = None
    steps: Steps | None = ()
    spaces: Mapping[str, EditState] = field(default_factory=dict)

    def to(self, device: torch.device) -> EditState:
        """The same state with every tensor on ``device``."""
        layers = self.layer_weights
        steps = self.steps
        return EditState(
            maps={k: v.to(device) for k, v in self.maps.items()},
            layer_weights=None if layers is None else {k: v.to(device) for k, v in layers.items()},
            steps=None if steps is None else tuple((x.to(device), y.to(device)) for x, y in steps),
            spaces={name: state.to(device) for name, state in self.spaces.items()},
        )

    def tensors(self) -> dict[str, Tensor]:
        """The state as named CPU tensors, e.g. for a checkpoint: ``maps.<kind>``, ``layers.<key>`` and, when the
        history is known, ``steps.count`` with ``steps.<i>.x`` / ``steps.<i>.y`` (so that a restored editor keeps
        RECE's sums step by step, bit for bit as the run it came from); another space's state under
        ``space.<name>.``."""
        out = {f"maps.{k}": v.detach().cpu() for k, v in self.maps.items()}
        out.update({f"layers.{k}": v.detach().cpu() for k, v in (self.layer_weights or {}).items()})
        if self.steps is not None:
            out["steps.count"] = torch.tensor(len(self.steps))
            for i, (x, y) in enumerate(self.steps):
                out[f"steps.{i}.x"], out[f"steps.{i}.y"] = x.detach().cpu(), y.detach().cpu()
        for name, state in self.spaces.items():
            out.update({f"{SPACE_PREFIX}{name}.{k}": v for k, v in state.tensors().items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> EditState:
        """Inverse of :meth:`tensors` (the steps stay unknown when they were not saved)."""
        by_space: dict[str, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(SPACE_PREFIX):
                name, rest = key.removeprefix(SPACE_PREFIX).split(".", 1)
                by_space.setdefault(name, {})[rest] = value
        tensors = {k: v for k, v in tensors.items() if not k.startswith(SPACE_PREFIX)}
        maps = {k.removeprefix("maps."): v for k, v in tensors.items() if k.startswith("maps.")}
        layers = {k.removeprefix("layers."): v for k, v in tensors.items() if k.startswith("layers.")}
        if set(maps) != set(KINDS):
            raise RECEError(f"an edit state needs the maps {list(KINDS)}, got {sorted(maps)}")
        steps: Steps | None = None
        if "steps.count" in tensors:
            count = int(tensors["steps.count"])
            steps = tuple((tensors[f"steps.{i}.x"], tensors[f"steps.{i}.y"]) for i in range(count))
        if torch.equal(maps["to_k"], maps["to_v"]):
            maps["to_k"] = maps["to_v"]  # one map shared by keys and values, as in the run it came from
        spaces = {name: cls.from_tensors(part) for name, part in by_space.items()}
        return cls(maps=maps, layer_weights=layers or None, steps=steps, spaces=spaces)  # type: ignore[arg-type]
