"""One closed-form edit per input space: families whose denoiser reads a text through several embeddings.

A family's text-reading layers are grouped by the embedding they read (:attr:`Projection.space
<rece_lightning.maths.projections.Projection.space>`): Flux and SD3 read the token embeddings through
``context_embedder`` and the pooled CLIP embedding through ``time_text_embed.text_embedder.linear_1``; HiDream reads
T5 through the last ``caption_projection`` and one Llama layer through each other one. Each space has its own width,
so each gets its own :class:`~rece_lightning.maths.editor.KVEditor` (its own map ``T``, ``W' = W T`` for every layer of the
space).

**Why the spaces separate exactly.** Put a text's embeddings of all spaces side by side, ``c = [c₁; c₂; …]``, and
read every layer of space ``s`` as a layer of the joint space whose weight is zero outside the columns of ``s``. The
rows UCE edits lie in one space each (token rows, the pooled row), so ``λI + Σ c cᵀ`` and ``λI + Σ c* cᵀ`` are block
diagonal, and so is ``T``: UCE in the joint space *is* one UCE per space. RECE's derivation
``c' = (γI + Σ W'ᵀW')⁻¹ Σ W'ᵀW₀ c`` (eq. 8) has block-diagonal sums for the same reason, so the joint adversarial
embedding is the per-space derivations side by side: the adversarial pooled embedding is derived beside the token one
from the pooled layers alone. ``tests/test_spaces.py`` checks both against the joint-space computation.

:class:`SpacedEditor` holds the editors and offers the one-editor interface the module, keep-best, checkpoints and
exports use (weights, snapshots, LoRA factors over every space); ``derive`` and ``erase`` name their space. A
one-space family's :class:`SpacedEditor` only forwards to its one :class:`~rece_lightning.maths.editor.KVEditor`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from rece_lightning.errors import RECEError
from rece_lightning.maths import closed_form
from rece_lightning.maths.closed_form import Technique
from rece_lightning.maths.edit_state import EditState
from rece_lightning.maths.editor import KVEditor, LoraLayer, relative_change
from rece_lightning.maths.projections import MAIN_SPACE, Kind, Projection, write_weights

__all__ = ["SpacedEditor", "group_by_space"]


def group_by_space(projections: Sequence[Projection]) -> dict[str, list[Projection]]:
    """The projections by input space, :data:`~rece_lightning.maths.projections.MAIN_SPACE` first, then the others in
    the order their first layer comes."""
    groups: dict[str, list[Projection]] = {MAIN_SPACE: []}
    for p in projections:
        if "." in p.space:
            raise RECEError(f"input space names have no dot, got {p.space!r}")
        groups.setdefault(p.space, []).append(p)
    if not groups[MAIN_SPACE]:
        raise RECEError("there is no layer reading the token embeddings to edit")
    return groups


class SpacedEditor:
    """One :class:`~rece_lightning.maths.editor.KVEditor` per input space (see the module docstring).

    Args:
        projections: every text-reading layer (:meth:`~rece_lightning.models.family.ModelFamily.text_layers`).
        with_to_k, technique: as :class:`~rece_lightning.maths.editor.KVEditor`, for every space.

    Attributes:
        editors: the editor of each space, :data:`~rece_lightning.maths.projections.MAIN_SPACE` first.
        main: the token space's editor.
        projections: every layer, in the family's order.
    """

    def __init__(self, projections: Sequence[Projection], *, with_to_k: bool = True,
                 technique: Technique = "replace") -> None:
        groups = group_by_space(projections)
        self.editors: dict[str, KVEditor] = {
            space: KVEditor(layers, with_to_k=with_to_k, technique=technique) for space, layers in groups.items()}
        self.main = self.editors[MAIN_SPACE]
        self.projections: list[Projection] = list(projections)

    # -------------------------------------------------------------------------------------------- spaces
    @property
    def spaces(self) -> tuple[str, ...]:
        """The input spaces, the token space first."""
        return tuple(self.editors)

    def space(self, name: str) -> KVEditor:
        """The editor of input space ``name``."""
        if name not in self.editors:
            raise RECEError(f"no layer reads the input space {name!r}; the spaces are {list(self.editors)}")
        return self.editors[name]

    def _merged(self, part: str) -> dict[str, Tensor]:
        if len(self.editors) == 1:
            return getattr(self.main, part)
        return {k: v for e in self.editors.values() for k, v in getattr(e, part).items()}

    # ---------------------------------------------------------------------- the one-editor interface
    @property
    def original(self) -> dict[str, Tensor]:
        """The weights of every layer when the editor was made (``W₀``), by state-dict key."""
        return self._merged("original")

    @property
    def base(self) -> dict[str, Tensor]:
        """The weights every space's edit applies to."""
        return self._merged("base")

    @property
    def base_is_original(self) -> bool:
        """Whether every space's edit applies to the original weights."""
        return all(e.base_is_original for e in self.editors.values())

    @property
    def dim(self) -> int:
        """The width of the token space."""
        return self.main.dim

    @property
    def device(self) -> torch.device:
        """The device of the editors' tensors."""
        return self.main.device

    @property
    def technique(self) -> Technique:
        """``replace`` or ``tensor``, the same for every space."""
        return self.main.technique

    @property
    def edited_kinds(self) -> tuple[Kind, ...]:
        """The projection kinds edited, the same for every space."""
        return self.main.edited_kinds

    @property
    def maps(self) -> Mapping[Kind, Tensor]:
        """The token space's maps ``T`` (:meth:`space` gives the others')."""
        return self.main.maps

    @property
    def layer_weights(self) -> Mapping[str, Tensor] | None:
        """The per-layer weights of the general path (every space), else ``None``."""
        if self.main.layer_weights is None:
            return None
        return {k: v for e in self.editors.values() for k, v in (e.layer_weights or {}).items()}

    @property
    def state(self) -> EditState:
        """The current edit of every space (:meth:`snapshot`)."""
        return self.snapshot()

    def to(self, device: torch.device | str) -> SpacedEditor:
        """Move every space's editor to ``device``."""
        for editor in self.editors.values():
            editor.to(device)
        return self

    def reset(self) -> None:
        """Forget every space's edit (the bases are kept)."""
        for editor in self.editors.values():
            editor.reset()

    def set_base(self, weights: Mapping[str, Tensor]) -> None:
        """Start every space from given weights (validated by the caller; keyed by state-dict key)."""
        for editor in self.editors.values():
            editor.set_base(weights)

    def snapshot(self) -> EditState:
        """The token space's state, with the other spaces' in :attr:`EditState.spaces
        <rece_lightning.maths.edit_state.EditState.spaces>`."""
        state = self.main.snapshot()
        if len(self.editors) == 1:
            return state
        others = {name: e.snapshot() for name, e in self.editors.items() if name != MAIN_SPACE}
        return EditState(maps=state.maps, layer_weights=state.layer_weights, steps=state.steps, spaces=others)

    def restore_snapshot(self, state: EditState) -> None:
        """Make ``state`` the current edit of every space (a space it does not hold is unedited)."""
        if not isinstance(state, EditState):
            raise RECEError(f"expected an EditState, got {type(state).__name__}")
        unknown = set(state.spaces) - set(self.editors)
        if unknown:
            raise RECEError(f"the edit state holds input spaces {sorted(unknown)} this model does not read")
        self.main.restore_snapshot(EditState(maps=state.maps, layer_weights=state.layer_weights, steps=state.steps))
        for name, editor in self.editors.items():
            if name != MAIN_SPACE:
                if name in state.spaces:
                    editor.restore_snapshot(state.spaces[name])
                else:
                    editor.reset()

    def current_weights(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The edited weights of every layer (see :meth:`KVEditor.current_weights
        <rece_lightning.maths.editor.KVEditor.current_weights>`)."""
        if len(self.editors) == 1:
            return self.main.current_weights(dtype)
        return {k: v for e in self.editors.values() for k, v in e.current_weights(dtype).items()}

    @torch.no_grad()
    def relative_change(self) -> float:
        """``‖W_model − W₀‖_F / ‖W₀‖_F`` over every layer of every space."""
        return relative_change(self.projections, self.original)

    def apply(self) -> None:
        """Fold every space's edit into its layers."""
        for editor in self.editors.values():
            editor.apply()

    def restore_original(self) -> None:
        """Put the original weights back into every layer (the edit states are kept)."""
        write_weights(self.projections, self.original)

    def edit_rank(self, rtol: float = 1e-10) -> int:
        """Numerical rank of the token space's ``T − I`` (:meth:`space_ranks` gives every space's)."""
        return self.main.edit_rank(rtol)

    def space_ranks(self, rtol: float = 1e-10) -> dict[str, int]:
        """The numerical rank of ``T − I`` per space."""
        return {name: e.edit_rank(rtol) for name, e in self.editors.items()}

    def lora_layers(self, rtol: float = 1e-10, max_rank: int | None = None) -> Iterator[LoraLayer]:
        """Low-rank factors of every edited layer of every space, one layer at a time in float64, each cut to at most
        ``max_rank`` directions (:meth:`KVEditor.lora_layers <rece_lightning.maths.editor.KVEditor.lora_layers>`)."""
        for editor in self.editors.values():
            yield from editor.lora_layers(rtol, max_rank)

    def lora_factors(self, rtol: float = 1e-10) -> dict[str, tuple[Tensor, Tensor]]:
        """Exact low-rank factors of every edited layer of every space (:meth:`KVEditor.lora_factors
        <rece_lightning.maths.editor.KVEditor.lora_factors>`)."""
        return {k: v for e in self.editors.values() for k, v in e.lora_factors(rtol).items()}

    def derivation_grams(self, space: str = MAIN_SPACE) -> tuple[Tensor, Tensor]:
        """RECE's sums ``Σ W'ᵀW'``, ``Σ W'ᵀW₀`` of one space."""
        return self.space(space).derivation_grams()

    # ------------------------------------------------------------------------------ the maths, per space
    def derive(self, concepts: Sequence[Tensor], *, space: str = MAIN_SPACE, gamma: float,
               variant: closed_form.Derivation = "regzero", targets: Sequence[Tensor | None] | None = None,
               surrogate_item: closed_form.SurrogateItem = "1st") -> list[Tensor]:
        """RECE's adversarial embeddings in input space ``space`` (:meth:`KVEditor.derive
        <rece_lightning.maths.editor.KVEditor.derive>`): the space's part of the joint derivation."""
        return self.space(space).derive(concepts, gamma=gamma, variant=variant, targets=targets,
                                        surrogate_item=surrogate_item)

    def erase(self, blocks: Sequence[tuple[Tensor, Tensor]], preserve: Tensor | None, *, space: str = MAIN_SPACE,
              lamb: float, erase_scale: float, preserve_scale: float) -> None:
        """One UCE edit of input space ``space`` (:meth:`KVEditor.erase <rece_lightning.maths.editor.KVEditor.erase>`)."""
        self.space(space).erase(blocks, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)
