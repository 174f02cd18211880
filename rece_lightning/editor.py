"""The state of a K/V edit of one UNet: original weights, the current edit, and the sums RECE needs.

With UCE "replace" values every edit is one text-side map, ``W' = W T`` (DESIGN.md, "The edit is one matrix"), so
the editor keeps one ``d × d`` map per projection kind (``to_k`` and ``to_v``; they differ only with
``with_to_k=False``) on top of *base* weights: the original weights, or K/V weights loaded from a file (e.g. a
published UCE checkpoint). Iterations compose, ``W_final = W_base · T₀ T₁ T₂ …``, and RECE's derivation needs only
``G_bb = Σ W_baseᵀ W_base`` and ``G_b0 = Σ W_baseᵀ W₀`` computed once:
``Σ W'ᵀW' = Tᵀ G_bb T`` and ``Σ W'ᵀW₀ = Tᵀ G_b0``.

The "tensor" technique has layer-dependent values, so it keeps explicit per-layer weights instead (the general
path); both paths agree on "replace" edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rece_lightning import closed_form
from rece_lightning.cross_attention import Kind, Projection, find_projections, write_weights
from rece_lightning.errors import RECEError

Technique = Literal["replace", "tensor"]
KINDS: tuple[Kind, Kind] = ("to_k", "to_v")


class KVEditor:
    """Edits the cross-attention K/V projections of ``unet`` in closed form; can always undo.

    Args:
        unet: any module with diffusers-named ``attn2.to_k`` / ``attn2.to_v`` linear layers.
        with_to_k: edit the keys as well as the values (UCE/RECE default ``True``).
        technique: ``"replace"`` (shared map, fast) or ``"tensor"`` (per-layer values, general path).
    """

    def __init__(self, unet: nn.Module, *, with_to_k: bool = True, technique: Technique = "replace") -> None:
        if technique not in ("replace", "tensor"):
            raise RECEError(f"technique must be 'replace' or 'tensor', got {technique!r}")
        self.projections: list[Projection] = find_projections(unet)
        self.with_to_k = with_to_k
        self.technique: Technique = technique
        self.edited_kinds: tuple[Kind, ...] = KINDS if with_to_k else ("to_v",)
        self.dim = self.projections[0].module.in_features
        self.original: dict[str, Tensor] = {}
        for p in self.projections:
            weight = p.module.weight.detach()
            if not torch.isfinite(weight).all():
                raise RECEError(f"the model's {p.key} contains non-finite values (NaN or inf); it cannot be edited")
            self.original[p.key] = weight.clone()
        self.base: dict[str, Tensor] = self.original
        self.device = self.projections[0].module.weight.device
        self._grams: dict[Kind, tuple[Tensor, Tensor]] | None = None
        self.reset()

    # ----------------------------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> KVEditor:
        """Move the editor's tensors (original weights, maps, sums) to ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        base_is_original = self.base_is_original
        self.original = {k: v.to(device) for k, v in self.original.items()}
        self.base = self.original if base_is_original else {k: v.to(device) for k, v in self.base.items()}
        self.maps = {k: v.to(device) for k, v in self.maps.items()}
        if self.layer_weights is not None:
            self.layer_weights = {k: v.to(device) for k, v in self.layer_weights.items()}
        if self._grams is not None:
            self._grams = {k: (bb.to(device), b0.to(device)) for k, (bb, b0) in self._grams.items()}
        self.device = device
        return self

    @property
    def base_is_original(self) -> bool:
        return self.base is self.original

    def reset(self) -> None:
        """Forget every edit made on top of the base weights (the base itself is kept)."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        self.maps: dict[Kind, Tensor] = {k: eye.clone() for k in KINDS}
        self.layer_weights: dict[str, Tensor] | None = None
        if self.technique == "tensor":
            self.layer_weights = {k: w.to(torch.float64) for k, w in self.base.items()}

    def set_base(self, weights: Mapping[str, Tensor]) -> None:
        """Start from given K/V weights (validated by the caller), e.g. a published UCE checkpoint."""
        self.base = {p.key: weights[p.key].to(self.device, self.original[p.key].dtype) for p in self.projections}
        self._grams = None
        self.reset()

    def snapshot(self) -> dict[str, object]:
        """A copy of the edit state, cheap for "replace" (two d × d maps), to restore the best iteration."""
        layers = None if self.layer_weights is None else {k: v.clone() for k, v in self.layer_weights.items()}
        return {"maps": {k: v.clone() for k, v in self.maps.items()}, "layer_weights": layers}

    def restore_snapshot(self, state: Mapping[str, object]) -> None:
        maps = state["maps"]
        assert isinstance(maps, dict)
        self.maps = {k: v.to(self.device, torch.float64) for k, v in maps.items()}
        layers = state.get("layer_weights")
        self.layer_weights = None if layers is None else {k: v.to(self.device) for k, v in layers.items()}

    # -------------------------------------------------------------------------------------------- weights
    def _kind_of(self, key: str) -> Kind:
        return "to_k" if key.endswith("to_k.weight") else "to_v"

    def current_weights(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The edited weights ``W_base T`` (or the per-layer weights), in ``dtype`` (default: the model's)."""
        out: dict[str, Tensor] = {}
        for p in self.projections:
            target = dtype or p.module.weight.dtype
            if self.layer_weights is not None:
                out[p.key] = self.layer_weights[p.key].to(target)
                continue
            kind = self._kind_of(p.key)
            base = self.base[p.key]
            if kind not in self.edited_kinds:
                out[p.key] = base.to(target)
                continue
            # the fold runs in float32 (float64 for float64 models): T ≈ I + low rank, ~1e-7 relative accuracy
            work = torch.float64 if target == torch.float64 else torch.float32
            out[p.key] = (base.to(work) @ self.maps[kind].to(work)).to(target)
        return out

    @torch.no_grad()
    def relative_change(self) -> float:
        """``‖W_model − W₀‖_F / ‖W₀‖_F`` over all projections, read from the UNet (after :meth:`apply`)."""
        diff = total = 0.0
        for p in self.projections:
            w0 = self.original[p.key].to(p.module.weight.device, torch.float32)
            diff += float((p.module.weight.float() - w0).square().sum())
            total += float(w0.square().sum())
        return (diff / total) ** 0.5 if total else 0.0

    def apply(self) -> None:
        """Fold the current edit into the UNet's projection weights."""
        write_weights(self.projections, self.current_weights())

    def restore_original(self) -> None:
        """Put the original weights back into the UNet (the edit state is kept and can be re-applied)."""
        write_weights(self.projections, self.original)

    # ----------------------------------------------------------------------------------------- RECE sums
    def _base_grams(self) -> dict[Kind, tuple[Tensor, Tensor]]:
        """Per kind: ``(Σ W_baseᵀ W_base, Σ W_baseᵀ W₀)``, summed in float64.

        The per-layer products run in float64, except for lower-precision weights on a CPU, where float32 halves the
        cost (~1e-7 relative error, far below the 1e-3 the edits are checked to).
        """
        if self._grams is None:
            low_precision = next(iter(self.base.values())).dtype != torch.float64
            work = torch.float32 if self.device.type == "cpu" and low_precision else torch.float64
            grams: dict[Kind, tuple[Tensor, Tensor]] = {}
            for kind in KINDS:
                bb = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
                b0 = bb if self.base_is_original else bb.clone()
                for p in self.projections:
                    if p.kind != kind:
                        continue
                    w_b = self.base[p.key].to(work)
                    bb += (w_b.T @ w_b).double()
                    if not self.base_is_original:
                        b0 += (w_b.T @ self.original[p.key].to(work)).double()
                grams[kind] = (bb, b0)
            self._grams = grams
        return self._grams

    def derivation_grams(self) -> tuple[Tensor, Tensor]:
        """``A = Σ W'ᵀW'`` and ``B = Σ W'ᵀW₀`` over all K and V projections (float64, d × d).

        The official RECE derivation always sums over keys and values (``with_to_k=True``).
        """
        if self.layer_weights is not None:
            a = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
            b = torch.zeros_like(a)
            for p in self.projections:
                w1 = self.layer_weights[p.key]
                a += w1.T @ w1
                b += w1.T @ self.original[p.key].to(torch.float64)
            return a, b
        grams = self._base_grams()
        if torch.equal(self.maps["to_k"], self.maps["to_v"]):  # with_to_k: one map, sum the kinds first
            t = self.maps["to_v"]
            g_bb = grams["to_k"][0] + grams["to_v"][0]
            g_b0 = grams["to_k"][1] + grams["to_v"][1]
            return t.T @ g_bb @ t, t.T @ g_b0
        a = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        b = torch.zeros_like(a)
        for kind, (g_bb, g_b0) in grams.items():
            t = self.maps[kind]
            a += t.T @ g_bb @ t
            b += t.T @ g_b0
        return a, b

    def derive(
        self,
        concepts: Sequence[Tensor],
        *,
        gamma: float,
        variant: closed_form.Derivation = "regzero",
        targets: Sequence[Tensor | None] | None = None,
        surrogate_item: closed_form.SurrogateItem = "1st",
    ) -> list[Tensor]:
        """RECE's adversarial embedding of each concept (all token rows) against the current edit.

        The sums ``A`` and ``B`` are formed once for all concepts, as every concept of an iteration is derived
        against the same edited model (official ``train.py``).
        """
        a, b = self.derivation_grams()
        targets = list(targets) if targets is not None else [None] * len(concepts)
        return [
            closed_form.derive_embeddings(
                concept.to(self.device),
                a,
                b,
                gamma=gamma,
                variant=variant,
                target=None if target is None else target.to(self.device),
                surrogate_item=surrogate_item,
            )
            for concept, target in zip(concepts, targets, strict=True)
        ]

    # --------------------------------------------------------------------------------------------- erase
    def erase(
        self,
        blocks: Sequence[tuple[Tensor, Tensor]],
        preserve: Tensor | None,
        *,
        lamb: float,
        erase_scale: float,
        preserve_scale: float,
    ) -> None:
        """One UCE edit on top of the current weights: every ``(inputs, targets)`` block is mapped to its targets.

        ``blocks`` holds one (rows, d) pair per erased text; the "tensor" technique normalises per block as the
        official code does. ``preserve`` rows keep their current outputs.
        """
        if not blocks:
            raise RECEError("nothing to erase: the concept list is empty")
        dev = self.device
        inputs = torch.cat([c for c, _ in blocks]).to(dev, torch.float64)
        preserve = None if preserve is None else preserve.to(dev, torch.float64)
        if self.layer_weights is None:
            targets = torch.cat([t for _, t in blocks]).to(dev, torch.float64)
            step = closed_form.uce_map(
                inputs, targets, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale
            )
            if len(self.edited_kinds) == 2 and torch.equal(self.maps["to_k"], self.maps["to_v"]):
                product = self.maps["to_v"] @ step  # with_to_k: keys and values share one map
                self.maps.update({kind: product for kind in self.edited_kinds})
            else:
                for kind in self.edited_kinds:
                    self.maps[kind] = self.maps[kind] @ step
            self._check_finite()
            return
        for p in self.projections:
            if p.kind not in self.edited_kinds:
                continue
            w = self.layer_weights[p.key]
            values = torch.cat([
                closed_form.tensor_values(w, c.to(dev), t.to(dev)) if self.technique == "tensor"
                else t.to(dev, torch.float64) @ w.T
                for c, t in blocks
            ])
            self.layer_weights[p.key] = closed_form.uce_layer(
                w, inputs, values, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale
            )
        self._check_finite()

    def _check_finite(self) -> None:
        tensors = self.maps.values() if self.layer_weights is None else self.layer_weights.values()
        if not all(torch.isfinite(t).all() for t in tensors):
            raise RECEError("the edit produced non-finite weights; increase lamb (λ) or check the embeddings")

    # ------------------------------------------------------------------------------------------- exports
    def edit_rank(self, rtol: float = 1e-10) -> int:
        """Numerical rank of the value map ``T − I`` (for "replace" edits): at most the erased token rows."""
        if self.layer_weights is not None:
            raise RECEError("the edit rank of a shared map is defined for the 'replace' technique only")
        delta = self.maps["to_v"] - torch.eye(self.dim, dtype=torch.float64, device=self.device)
        return int(closed_form.low_rank_factors(delta, rtol=rtol)[0].shape[1])

    def lora_factors(self, rtol: float = 1e-10) -> dict[str, tuple[Tensor, Tensor]]:
        """Exact low-rank factors ``(B, A)`` with ``W_edited = W₀ + B A`` per edited projection (float64).

        For a shared map on the original weights, ``T − I = U Vᵀ`` gives ``B_l = W₀_l U``, ``A = Vᵀ`` (one SVD);
        otherwise each layer's difference is factored by SVD truncated at ``rtol · σ_max``.
        """
        out: dict[str, tuple[Tensor, Tensor]] = {}
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        shared: dict[Kind, tuple[Tensor, Tensor]] = {}
        if self.layer_weights is None and self.base_is_original:
            shared = {k: closed_form.low_rank_factors(self.maps[k] - eye, rtol=rtol) for k in self.edited_kinds}
        current = None if shared else self.current_weights(torch.float64)
        for p in self.projections:
            if p.kind not in self.edited_kinds:
                continue
            w0 = self.original[p.key].to(torch.float64)
            if shared:
                us, v = shared[p.kind]
                out[p.key] = (w0 @ us, v.T.contiguous())
            else:
                assert current is not None
                b, v = closed_form.low_rank_factors(current[p.key] - w0, rtol=rtol)
                out[p.key] = (b, v.T.contiguous())
        return out
