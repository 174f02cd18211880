"""The state of a K/V edit of one UNet: original weights, the current edit, and the sums RECE needs.

With UCE "replace" values every edit is one text-side map, ``W' = W T`` (README, "How it works"), so
the editor keeps one ``d × d`` map per projection kind (``to_k`` and ``to_v``; they differ only with
``with_to_k=False``) on top of *base* weights: the original weights, or K/V weights loaded from a file (e.g. a
published UCE checkpoint). Iterations compose, ``W_final = W_base · T₀ T₁ T₂ …``, and RECE's derivation needs only
``G_bb = Σ W_baseᵀ W_base`` and ``G_b0 = Σ W_baseᵀ W₀`` computed once:
``Σ W'ᵀW' = Tᵀ G_bb T`` and ``Σ W'ᵀW₀ = Tᵀ G_b0``. Every step is ``Tᵢ = I + X Yᵀ`` with ``n ≪ d`` columns, so the
editor updates the maps and these two sums in ``O(d² n)`` per step (no ``d × d × d`` product in the recipe).

The "tensor" technique has layer-dependent values, so it keeps explicit per-layer weights instead (the general
path); both paths agree on "replace" edits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.maths import closed_form
from rece_lightning.maths.closed_form import Technique
from rece_lightning.maths.edit_state import KINDS, EditState, Steps
from rece_lightning.maths.projections import Kind, Projection, find_projections, write_weights

LOW_RANK_FOLD = 6
"""Fold ``W T`` as ``W + (W U) Vᵀ`` when ``T − I = U Vᵀ`` has at most ``d / LOW_RANK_FOLD`` columns: a third of the
dense product's multiplications or fewer (thin products run less efficiently, so a smaller saving is not worth it)."""


@dataclass(frozen=True)
class _Cached:
    """A value computed for one base (identity) and one key (a state or a tuple of steps)."""

    base: Mapping[str, Tensor]
    key: object
    value: dict



@torch.no_grad()
def relative_change(projections: Sequence[Projection], original: Mapping[str, Tensor]) -> float:
    """``‖W_model − W₀‖_F / ‖W₀‖_F`` over ``projections``, their current weights against ``original`` (by key)."""
    diff = total = 0.0
    for p in projections:
        w0 = original[p.key].to(p.module.weight.device, torch.float32)
        diff += float((p.module.weight.float() - w0).square().sum())
        total += float(w0.square().sum())
    return (diff / total) ** 0.5 if total else 0.0

class KVEditor:
    """Edits the text-reading projections of a denoiser in closed form; can always undo.

    Args:
        projections: the layers to edit (a family's :meth:`~rece_lightning.models.family.ModelFamily.text_layers`);
            :meth:`for_unet` finds them in a UNet.
        with_to_k: edit the keys as well as the values (UCE/RECE default ``True``).
        technique: ``"replace"`` (shared map, fast) or ``"tensor"`` (per-layer values, general path).

    Attributes:
        original: the weights when the editor was made (``W₀``), by state-dict key.
        base: the weights the edit applies to: :attr:`original`, or K/V weights loaded with :meth:`set_base`.
        state: the current :class:`EditState`.
    """

    def __init__(
        self, projections: Sequence[Projection], *, with_to_k: bool = True, technique: Technique = "replace"
    ) -> None:
        if technique not in ("replace", "tensor"):
            raise RECEError(f"technique must be 'replace' or 'tensor', got {technique!r}")
        if not projections:
            raise RECEError("there is no layer to edit")
        self.projections: list[Projection] = list(projections)
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
        self._grams: _Cached | None = None  # Σ W_baseᵀW_base, Σ W_baseᵀW₀ per kind, for one base
        self._sums: _Cached | None = None  # RECE's derivation sums, for one base and one state (or steps)
        self.reset()

    @classmethod
    def for_unet(cls, unet: nn.Module, **kwargs) -> KVEditor:
        """An editor of the ``attn2.to_k`` / ``attn2.to_v`` projections of ``unet``."""
        return cls(find_projections(unet), **kwargs)

    # ----------------------------------------------------------------------------------------------- state
    def to(self, device: torch.device | str) -> KVEditor:
        """Move the editor's tensors (original and base weights, the edit state) to ``device``."""
        device = torch.device(device)
        if device != self.device:
            base_is_original = self.base_is_original
            self.original = {k: v.to(device) for k, v in self.original.items()}
            self.base = self.original if base_is_original else {k: v.to(device) for k, v in self.base.items()}
            self.state = self.state.to(device)
            self.device = device
        return self

    @property
    def base_is_original(self) -> bool:
        """Whether the edit applies to the original weights (not to K/V weights loaded with :meth:`set_base`)."""
        return self.base is self.original

    @property
    def maps(self) -> Mapping[Kind, Tensor]:
        """The current text-side maps ``T`` per kind (see :class:`EditState`)."""
        return self.state.maps

    @property
    def layer_weights(self) -> Mapping[str, Tensor] | None:
        """The current per-layer weights of the general path, else ``None``."""
        return self.state.layer_weights

    def reset(self) -> None:
        """Forget every edit made on top of the base weights (the base itself is kept)."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        layers = {k: w.to(torch.float64) for k, w in self.base.items()} if self.technique == "tensor" else None
        self.state = EditState(maps=dict.fromkeys(KINDS, eye), layer_weights=layers, steps=())

    def set_base(self, weights: Mapping[str, Tensor]) -> None:
        """Start from given K/V weights (validated by the caller), e.g. a published UCE checkpoint."""
        self.base = {p.key: weights[p.key].to(self.device, self.original[p.key].dtype) for p in self.projections}
        self.reset()

    def snapshot(self) -> EditState:
        """The current edit state (immutable, so keeping it costs nothing), to restore the best iteration."""
        return self.state

    def restore_snapshot(self, state: EditState) -> None:
        """Make ``state`` the current edit (call :meth:`apply` to fold it into the model)."""
        if not isinstance(state, EditState):
            raise RECEError(f"expected an EditState, got {type(state).__name__}")
        self.state = state.to(self.device)

    # -------------------------------------------------------------------------------------------- weights
    def _kind_of(self, key: str) -> Kind:
        return "to_k" if key.endswith("to_k.weight") else "to_v"

    def _folded(self, dtype: torch.dtype | None = None, into_model: bool = False) -> dict[str, Tensor]:
        """``W_base T`` per projection (or the per-layer weights) in ``dtype`` (default: the model's).

        The fold runs in float32 (float64 for float64 models): T ≈ I + low rank, ~1e-7 relative accuracy. With
        ``into_model`` the products are written straight into the projection weights (no intermediate copies).
        """
        out: dict[str, Tensor] = {}
        maps: dict[tuple[Kind, torch.dtype], Tensor] = {}
        # W + (W U) Vᵀ only when T − I is thin enough; otherwise the dense W T is cheaper
        factors = self._map_factors() if self._step_columns() * LOW_RANK_FOLD <= self.dim else None
        thin: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
        for p in self.projections:
            weight = p.module.weight
            target = dtype or weight.dtype
            kind = self._kind_of(p.key)
            if self.layer_weights is not None:
                value = self.layer_weights[p.key]
            elif kind not in self.edited_kinds:
                value = self.base[p.key]
            else:
                work = torch.float64 if target == torch.float64 else torch.float32
                if factors is not None:  # W T = W + (W U) Vᵀ
                    if work not in thin:
                        thin[work] = (factors[0].to(weight.device, work), factors[1].T.to(weight.device, work))
                    u, vt = thin[work]
                    base = self.base[p.key].to(weight.device, work)
                    if into_model and weight.dtype == work:
                        torch.addmm(base, base @ u, vt, out=weight.data)
                        continue
                    value = torch.addmm(base, base @ u, vt)
                    if into_model:
                        weight.data.copy_(value.to(weight.device, weight.dtype))
                    else:
                        out[p.key] = value.to(target)
                    continue
                if (kind, work) not in maps:
                    maps[kind, work] = self.maps[kind].to(weight.device, work)
                base = self.base[p.key].to(weight.device, work)
                if into_model and weight.dtype == work:
                    torch.matmul(base, maps[kind, work], out=weight.data)
                    continue
                value = base @ maps[kind, work]
            if into_model:
                weight.data.copy_(value.to(weight.device, weight.dtype))
            else:
                out[p.key] = value.to(target)
        return out

    def _map_factors(self) -> tuple[Tensor, Tensor] | None:
        """``(U, V)`` with ``T − I = U Vᵀ`` for every edited kind (they share the steps), from the edit's low-rank
        steps; ``None`` when the history is unknown (a state read from an older checkpoint), for the general path, or
        when the steps have ``d`` or more columns in all."""
        columns = self._step_columns()
        if not columns or columns >= self.dim:
            return None  # (with d or more columns the factors are no cheaper than the d × d map itself)
        return closed_form.steps_product_factors(self.state.steps)

    def _step_columns(self) -> int:
        """Columns of ``T − I = U Vᵀ`` from the known steps (0 when unknown, none, or for the general path)."""
        steps = self.state.steps
        if not steps or self.layer_weights is not None:
            return 0
        return sum(x.shape[1] for x, _ in steps)

    def current_weights(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The edited weights ``W_base T`` (or the per-layer weights), in ``dtype`` (default: the model's)."""
        return self._folded(dtype)

    @torch.no_grad()
    def relative_change(self) -> float:
        """``‖W_model − W₀‖_F / ‖W₀‖_F`` over all projections, read from the UNet (after :meth:`apply`)."""
        return relative_change(self.projections, self.original)

    @torch.no_grad()
    def apply(self) -> None:
        """Fold the current edit into the UNet's projection weights."""
        self._folded(into_model=True)

    def restore_original(self) -> None:
        """Put the original weights back into the UNet (the edit state is kept and can be re-applied)."""
        write_weights(self.projections, self.original)

    # ----------------------------------------------------------------------------------------- RECE sums
    def _base_grams(self) -> dict[Kind, tuple[Tensor, Tensor]]:
        """Per kind: ``(Σ W_baseᵀ W_base, Σ W_baseᵀ W₀)``, summed in float64; cached for the current base.

        The per-layer products run in float64, except for lower-precision weights on a CPU, where float32 halves the
        cost (~1e-7 relative error, far below the 1e-3 the edits are checked to); the symmetric ``Σ W_baseᵀ W_base``
        is built from its block upper triangle (:func:`~rece_lightning.maths.closed_form.add_gram_upper`).
        """
        if self._grams is not None and self._grams.base is self.base:
            return self._grams.value
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
                closed_form.add_gram_upper(bb, w_b)
                if not self.base_is_original:
                    b0 += (w_b.T @ self.original[p.key].to(work)).double()
            closed_form.mirror_upper(bb)
            grams[kind] = (bb, b0)
        self._grams = _Cached(self.base, None, grams)
        return grams

    def derivation_grams(self) -> tuple[Tensor, Tensor]:
        """``A = Σ W'ᵀW'`` and ``B = Σ W'ᵀW₀`` over all K and V projections (float64, d × d).

        The official RECE derivation always sums over keys and values (``with_to_k=True``). For "replace" edits the
        sums are ``Tᵀ G_bb T`` and ``Tᵀ G_b0`` per map; they are kept current step by step in ``O(d² n)``
        (:func:`~rece_lightning.maths.closed_form.congruence_update`) and formed densely only for a state of unknown history.
        """
        state = self.state
        if state.layer_weights is not None:
            a = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
            b = torch.zeros_like(a)
            for p in self.projections:
                w1 = state.layer_weights[p.key]
                a += w1.T @ w1
                b += w1.T @ self.original[p.key].to(torch.float64)
            return a, b
        sums = self._dense_sums(state) if state.steps is None else self._stepped_sums(state.steps)
        a = sum(a for a, _ in sums.values())
        b = sum(b for _, b in sums.values())
        return a, b  # type: ignore[return-value]

    def _grouped_grams(self, shared: bool) -> dict[tuple[Kind, ...], tuple[Tensor, Tensor]]:
        """The base grams summed over the kinds that share one map (both kinds when ``shared``)."""
        grams = self._base_grams()
        groups = [KINDS] if shared else [(kind,) for kind in KINDS]
        return {g: (sum(grams[k][0] for k in g), sum(grams[k][1] for k in g)) for g in groups}  # type: ignore[misc]

    def _stepped_sums(self, steps: Steps) -> dict[tuple[Kind, ...], tuple[Tensor, Tensor]]:
        """The sums after ``steps``: from the cached sums of a prefix of ``steps`` (or the grams, i.e. identity maps,
        where keys and values edited together share one map), folding in each remaining step in ``O(d² n)``."""
        cached = self._sums
        if (cached is not None and cached.base is self.base and isinstance(cached.key, tuple)
                and len(cached.key) <= len(steps) and all(a is b for a, b in zip(cached.key, steps, strict=False))):
            done, sums = len(cached.key), cached.value
        else:
            done, sums = 0, self._grouped_grams(shared=self.edited_kinds == KINDS)
        for x, y in steps[done:]:
            sums = {
                group: (closed_form.congruence_update(a, x, y), b + y @ (x.T @ b))
                if group[0] in self.edited_kinds else (a, b)
                for group, (a, b) in sums.items()
            }
        self._sums = _Cached(self.base, steps, sums)
        return sums

    def _dense_sums(self, state: EditState) -> dict[tuple[Kind, ...], tuple[Tensor, Tensor]]:
        """``(Tᵀ G_bb T, Tᵀ G_b0)`` per map, from the maps as they are (cached for this state)."""
        cached = self._sums
        if cached is not None and cached.base is self.base and cached.key is state:
            return cached.value
        shared = torch.equal(state.maps["to_k"], state.maps["to_v"])
        sums = {}
        for group, (g_bb, g_b0) in self._grouped_grams(shared).items():
            t = state.maps[group[0]]
            sums[group] = (t.T @ g_bb @ t, t.T @ g_b0)
        self._sums = _Cached(self.base, state, sums)
        return sums

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
        state = self.state
        if state.layer_weights is None:
            targets = torch.cat([t for _, t in blocks]).to(dev, torch.float64)
            x, y = closed_form.uce_factors(
                inputs, targets, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale
            )
            if x.shape[1] > x.shape[0]:  # more rows than the width (the robust recipe's caption sets): the step
                x, y = x @ y.T, torch.eye(x.shape[0], dtype=x.dtype, device=x.device)  # as one d × d, same product
            # T ← T (I + X Yᵀ) = T + (T X) Yᵀ; a map shared by keys and values stays shared
            maps = dict(state.maps)
            products: dict[int, Tensor] = {}
            for kind in self.edited_kinds:
                t = maps[kind]
                if id(t) not in products:
                    products[id(t)] = t + (t @ x) @ y.T
                maps[kind] = products[id(t)]
            steps = None if state.steps is None else (*state.steps, (x, y))
            new_state = EditState(maps=maps, layer_weights=None, steps=steps)
        else:
            layers = dict(state.layer_weights)
            for p in self.projections:
                if p.kind not in self.edited_kinds:
                    continue
                w = layers[p.key]
                values = torch.cat([
                    closed_form.tensor_values(w, c.to(dev), t.to(dev)) if self.technique == "tensor"
                    else t.to(dev, torch.float64) @ w.T
                    for c, t in blocks
                ])
                layers[p.key] = closed_form.uce_layer(
                    w, inputs, values, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale
                )
            new_state = EditState(maps=state.maps, layer_weights=layers, steps=state.steps)
        tensors = new_state.maps.values() if new_state.layer_weights is None else new_state.layer_weights.values()
        if not all(torch.isfinite(t).all() for t in tensors):
            raise RECEError("the edit produced non-finite weights; increase lamb (λ) or check the embeddings")
        self.state = new_state

    # ------------------------------------------------------------------------------------------- exports
    def edit_rank(self, rtol: float = 1e-10) -> int:
        """Numerical rank of the value map ``T − I`` (for "replace" edits): at most the erased token rows."""
        if self.layer_weights is not None:
            raise RECEError("the edit rank of a shared map is defined for the 'replace' technique only")
        return int(self._kind_factors(rtol)["to_v"][0].shape[1])

    def _kind_factors(self, rtol: float) -> dict[Kind, tuple[Tensor, Tensor]]:
        """``T − I ≈ (U S) Vᵀ`` truncated at ``rtol · σ_max`` per edited kind: from the steps without forming
        ``T − I`` when they are known (every edited kind has that map;
        :func:`~rece_lightning.maths.closed_form.low_rank_svd`), else by a dense SVD of each distinct map."""
        factors = self._map_factors()
        if factors is not None:
            return dict.fromkeys(self.edited_kinds, closed_form.low_rank_svd(*factors, rtol=rtol))
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        done: dict[int, tuple[Tensor, Tensor]] = {}
        for kind in self.edited_kinds:
            t = self.maps[kind]
            if id(t) not in done:
                done[id(t)] = closed_form.low_rank_factors(t - eye, rtol=rtol)
        return {kind: done[id(self.maps[kind])] for kind in self.edited_kinds}

    def _edited_layer(self, p: Projection) -> Tensor:
        """One projection's edited weight in float64 (one layer at a time: never a float64 copy of every K/V)."""
        if self.layer_weights is not None:
            return self.layer_weights[p.key].to(torch.float64)
        base = self.base[p.key].to(torch.float64)
        return base @ self.maps[p.kind] if p.kind in self.edited_kinds else base

    def lora_layers(self, rtol: float = 1e-10, max_rank: int | None = None) -> Iterator[LoraLayer]:
        """Low-rank factors ``(B, A)`` with ``W_edited ≈ W₀ + B A`` per edited projection (float64), one layer at a
        time, with the squared Frobenius norms of the layer's whole difference and of what a ``max_rank`` cut left out.

        For a shared map on the original weights, ``T − I = U S Vᵀ`` gives ``B_l = W₀_l U S``, ``A = Vᵀ`` (one SVD
        of the map, singular values above ``rtol · σ_max``); the cut keeps the ``max_rank`` leading directions and
        leaves out exactly ``‖W₀_l U_tail S_tail‖²`` (``V`` is orthonormal). Otherwise each layer's difference is
        factored by its own SVD and the cut leaves out its trailing singular values.
        """
        shared: dict[Kind, tuple[Tensor, Tensor]] = {}
        if self.layer_weights is None and self.base_is_original:
            shared = self._kind_factors(rtol)
        for p in self.projections:
            if p.kind not in self.edited_kinds:
                continue
            w0 = self.original[p.key].to(torch.float64)
            if shared:
                us, v = shared[p.kind]
                b = w0 @ us
            else:
                b, v = closed_form.low_rank_factors(self._edited_layer(p) - w0, rtol=rtol)
            keep = b.shape[1] if max_rank is None else min(max_rank, b.shape[1])
            yield LoraLayer(p.key, b[:, :keep], v[:, :keep].T.contiguous(), b.shape[1], float(b.square().sum()),
                            float(b[:, keep:].square().sum()))

    def lora_factors(self, rtol: float = 1e-10) -> dict[str, tuple[Tensor, Tensor]]:
        """Exact low-rank factors ``(B, A)`` with ``W_edited = W₀ + B A`` per edited projection (float64), all at once
        (:meth:`lora_layers` gives them layer by layer)."""
        return {layer.key: (layer.b, layer.a) for layer in self.lora_layers(rtol)}


@dataclass(frozen=True)
class LoraLayer:
    """One projection's LoRA factors (:meth:`KVEditor.lora_layers`).

    Attributes:
        key: the projection's state-dict key.
        b, a: ``W_edited ≈ W₀ + b a`` (float64, ``out × r`` and ``r × d``).
        rank: the rank of the layer's difference before any cut (above the SVD tolerance).
        norm2: ``‖W_edited − W₀‖²_F`` (before any rank cut).
        left_out2: the squared Frobenius norm of what the rank cut left out (0 when exact).
    """

    key: str
    b: Tensor
    a: Tensor
    rank: int
    norm2: float
    left_out2: float
