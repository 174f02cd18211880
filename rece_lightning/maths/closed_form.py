"""Closed-form maths of UCE and RECE, in plain torch (no diffusers import).

Notation (row convention, as the embeddings come out of a text encoder):

* ``C``  (n, d): erased concept token embeddings, one row per token;
* ``C*`` (n, d): the anchor (target) token embeddings paired row by row with ``C``;
* ``P``  (m, d): preserved token embeddings;
* ``W``  (o, d): a cross-attention key or value projection (``y = W c``).

UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, eq. 7) solves

    min_W'  λ‖W' − W‖² + s_e Σ_i ‖W' c_i − v*_i‖² + s_p Σ_j ‖W' p_j − W p_j‖²

whose minimiser is ``W' = (λW + s_e Σ v* cᵀ + s_p Σ W p pᵀ) M⁻¹`` with
``M = λI + s_e Σ c cᵀ + s_p Σ p pᵀ``. With "replace" values ``v* = W c*`` the numerator is ``W N`` with
``N = λI + s_e Σ c* cᵀ + s_p Σ p pᵀ``, so the edit is one map on the text side: ``W' = W T``, ``T = N M⁻¹``,
shared by every projection (README, "How it works").

RECE (Gong et al., "Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models", ECCV 2024, eq. 6-8)
derives the embedding that still regenerates the concept in the edited model,

    c' = argmin Σ_l ‖W'_l c' − W_l c‖² + γ R(c'),

from two d × d sums over the projections, ``A = Σ W'ᵀW'`` and ``B = Σ W'ᵀW`` (``W`` the original weights).

Every function accumulates and solves in float64: on Stable-Diffusion-scale embeddings ``M`` is ill-conditioned and
the official float32 computation carries ~2 % relative round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from rece_lightning.errors import RECEError

Derivation = Literal["regzero", "standard", "surrogate"]
SurrogateItem = Literal["1st", "2nd", "both"]
Technique = Literal["replace", "tensor"]  # UCE values: the anchor's ("replace") or the concept removed ("tensor")

__all__ = [
    "ClosedFormError",
    "add_gram_upper",
    "mirror_upper",
    "congruence_update",
    "Derivation",
    "SurrogateItem",
    "Technique",
    "derive_embeddings",
    "derivation_objective",
    "low_rank_factors",
    "low_rank_svd",
    "steps_product_factors",
    "regularised_system",
    "tensor_values",
    "uce_factors",
    "uce_layer",
    "uce_map",
    "uce_objective",
]


class ClosedFormError(RECEError):
    """A closed-form system cannot be solved as asked (bad scale, singular or non-finite system)."""


def _rows(x: Tensor | None, d: int, name: str) -> Tensor:
    """Return ``x`` as a float64 (n, d) matrix; ``None`` becomes an empty (0, d) matrix."""
    if x is None:
        return torch.zeros(0, d, dtype=torch.float64)
    if x.ndim != 2 or x.shape[1] != d:
        raise ClosedFormError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ClosedFormError(f"{name} contains non-finite values (NaN or inf); check the model weights")
    return x


def _check_scales(lamb: float, erase_scale: float, preserve_scale: float) -> None:
    if not lamb > 0:
        raise ClosedFormError(f"lamb (λ) must be > 0 so that the UCE system is invertible, got {lamb}")
    if erase_scale < 0 or preserve_scale < 0:
        raise ClosedFormError(
            f"erase_scale and preserve_scale must be ≥ 0, got {erase_scale} and {preserve_scale}"
        )


def regularised_system(
    inputs: Tensor, preserve: Tensor | None, lamb: float, erase_scale: float, preserve_scale: float
) -> Tensor:
    """``M = λI + s_e CᵀC + s_p PᵀP`` (float64, d × d): the right-hand factor of every UCE edit.

    It depends only on the embeddings, not on the layer, so one factorisation serves all projections.
    """
    _check_scales(lamb, erase_scale, preserve_scale)
    d = inputs.shape[-1]
    c = _rows(inputs, d, "erase inputs")
    p = _rows(preserve, d, "preserve inputs")
    eye = torch.eye(d, dtype=torch.float64, device=c.device)
    return lamb * eye + erase_scale * c.T @ c + preserve_scale * p.T.to(c.device) @ p.to(c.device)


def _right_solve(numerator: Tensor, system: Tensor) -> Tensor:
    """``numerator · system⁻¹`` for a symmetric positive-definite ``system`` (Cholesky, float64)."""
    factor = _cholesky(system)
    # X · S = Nm  ⇔  S · Xᵀ = Nmᵀ  (S symmetric)
    return torch.cholesky_solve(numerator.T.contiguous(), factor).T


def _cholesky(system: Tensor) -> Tensor:
    """Cholesky factor of the UCE system, or a clear error when it is (numerically) singular."""
    factor, info = torch.linalg.cholesky_ex(system)
    diagonal = factor.diagonal()
    # (min/max of diag L)² estimates 1/cond(M); below float64's resolution the solve is meaningless
    if int(info) != 0 or float((diagonal.min() / diagonal.max()) ** 2) < 1e-14:
        raise ClosedFormError(
            "the UCE system λI + s_e Σ c cᵀ + s_p Σ p pᵀ is singular (or numerically so); "
            "increase lamb (λ) or check the embeddings for non-finite values"
        )
    return factor


def uce_factors(
    inputs: Tensor,
    targets: Tensor,
    preserve: Tensor | None = None,
    *,
    lamb: float,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The UCE "replace" edit ``T = N M⁻¹`` in factored form ``T = I + X Yᵀ`` (float64, X and Y of shape (d, n)).

    ``N = λI + s_e C*ᵀC + s_p PᵀP`` and ``M = λI + s_e CᵀC + s_p PᵀP`` (UCE eq. 7 with ``v* = W c*``), so
    ``N = M + s_e (C* − C)ᵀ C`` and ``T = I + s_e (C* − C)ᵀ (C M⁻¹)``: ``X = s_e (C* − C)ᵀ``, ``Y = M⁻¹ Cᵀ``, one
    Cholesky solve with ``n`` right-hand sides (``n ≪ d`` erased token rows).
    """
    d = inputs.shape[-1]
    c = _rows(inputs, d, "erase inputs")
    t = _rows(targets, d, "erase targets")
    if t.shape != c.shape:
        raise ClosedFormError(f"erase inputs {tuple(c.shape)} and targets {tuple(t.shape)} must pair row by row")
    system = regularised_system(c, preserve, lamb, erase_scale, preserve_scale)
    y = torch.cholesky_solve(c.T.contiguous(), _cholesky(system))  # M⁻¹ Cᵀ
    return erase_scale * (t - c).T, y


def uce_map(
    inputs: Tensor,
    targets: Tensor,
    preserve: Tensor | None = None,
    *,
    lamb: float,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> Tensor:
    """The UCE "replace" edit as one text-side map ``T = N M⁻¹`` (float64, d × d), so that ``W' = W T``.

    ``T − I = X Yᵀ`` (:func:`uce_factors`) has rank at most ``n``, the number of erased token rows.
    """
    x, y = uce_factors(inputs, targets, preserve, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)
    return torch.eye(x.shape[0], dtype=torch.float64, device=x.device) + x @ y.T


def congruence_update(a: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``Sᵀ A S`` for ``S = I + X Yᵀ`` in ``O(d² n)``: ``A + Y (AX)ᵀ + (AX) Yᵀ + Y (Xᵀ A X) Yᵀ`` (A symmetric).

    Keeps RECE's ``Σ W'ᵀW'`` current through an edit ``W' → W' S`` without a ``d × d × d`` product.
    """
    ax = a @ x
    return a + y @ ax.T + ax @ y.T + y @ (x.T @ ax) @ y.T


def uce_layer(
    weight: Tensor,
    inputs: Tensor,
    values: Tensor,
    preserve: Tensor | None = None,
    *,
    lamb: float,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> Tensor:
    """General per-layer UCE edit (UCE eq. 7): ``W' = (λW + s_e Σ v* cᵀ + s_p Σ W p pᵀ) M⁻¹`` (float64).

    ``values`` (n, o) are the target outputs ``v*`` of this projection, e.g. from :func:`tensor_values`.
    """
    w = weight.to(torch.float64)
    d = w.shape[1]
    c = _rows(inputs, d, "erase inputs")
    v = _rows(values, w.shape[0], "erase values")
    if v.shape[0] != c.shape[0]:
        raise ClosedFormError(f"{c.shape[0]} erase inputs but {v.shape[0]} values")
    p = _rows(preserve, d, "preserve inputs")
    system = regularised_system(c, p, lamb, erase_scale, preserve_scale)
    numerator = lamb * w + erase_scale * v.T @ c + preserve_scale * (w @ p.T) @ p
    return _right_solve(numerator, system)


def tensor_values(weight: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
    """UCE "tensor" technique values: the anchor's outputs with the concept's output direction removed.

    As in the official code, ``u = W C / ‖W C‖_F`` is normalised over the whole token block (Frobenius norm),
    and ``v* = W C* − ⟨u, W C*⟩_F u`` (float64, (n, o)).
    """
    w = weight.to(torch.float64)
    old = inputs.to(torch.float64) @ w.T
    new = targets.to(torch.float64) @ w.T
    u = old / old.norm()
    return new - (u * new).sum() * u


def uce_objective(
    new_weight: Tensor,
    weight: Tensor,
    inputs: Tensor,
    values: Tensor,
    preserve: Tensor | None,
    *,
    lamb: float,
    erase_scale: float,
    preserve_scale: float,
) -> Tensor:
    """The UCE objective ``λ‖W' − W‖² + s_e Σ‖W'c − v*‖² + s_p Σ‖W'p − Wp‖²`` (for tests and diagnostics)."""
    w1, w0 = new_weight.to(torch.float64), weight.to(torch.float64)
    c, v = inputs.to(torch.float64), values.to(torch.float64)
    loss = lamb * (w1 - w0).square().sum() + erase_scale * (c @ w1.T - v).square().sum()
    if preserve is not None and preserve.numel():
        p = preserve.to(torch.float64)
        loss = loss + preserve_scale * (p @ (w1 - w0).T).square().sum()
    return loss


def derive_embeddings(
    concept: Tensor,
    edited_gram: Tensor,
    cross_gram: Tensor,
    *,
    gamma: float,
    variant: Derivation = "regzero",
    target: Tensor | None = None,
    surrogate_item: SurrogateItem = "1st",
) -> Tensor:
    """RECE's closed-form adversarial embeddings (RECE eq. 8 and its variants), float64, one row per token.

    With ``A = Σ W'ᵀW'`` (``edited_gram``) and ``B = Σ W'ᵀW`` (``cross_gram``), every variant solves
    ``(R₁) c' = (R₂) c`` row by row:

    * ``regzero`` (default): ``min Σ‖W'c' − Wc‖² + γ‖c'‖²`` → ``(γI + A) c' = B c``;
    * ``standard``: ``+ γ‖c' − c_t‖²`` towards a target embedding → ``(γI + A) c' = B c + γ c_t``;
    * ``surrogate`` (official ``close_surrogatereg``):
      ``1st`` = ``+ γ‖W'c' − W'c‖²`` → ``(1+γ) A c' = (B + γA) c``;
      ``2nd`` = ``+ γ‖c' − c‖²`` → ``(γI + A) c' = (γI + B) c``;
      ``both`` = both terms → ``(γI + (1+γ)A) c' = (γI + B + γA) c``.
    """
    if gamma < 0:
        raise ClosedFormError(f"gamma (γ) must be ≥ 0, got {gamma}")
    a = edited_gram.to(torch.float64)
    b = cross_gram.to(torch.float64)
    d = a.shape[0]
    c = _rows(concept, d, "concept embedding").to(a.device)
    eye = torch.eye(d, dtype=torch.float64, device=a.device)
    if variant == "regzero":
        lhs, rhs = gamma * eye + a, c @ b.T
    elif variant == "standard":
        if target is None:
            raise ClosedFormError("the 'standard' derivation needs a target embedding (the old target concept)")
        t = _rows(target, d, "target embedding").to(a.device)
        if t.shape != c.shape:
            raise ClosedFormError(f"target embedding {tuple(t.shape)} must match the concept {tuple(c.shape)}")
        lhs, rhs = gamma * eye + a, c @ b.T + gamma * t
    elif variant == "surrogate":
        if surrogate_item == "1st":
            lhs, mix = (1 + gamma) * a, b + gamma * a
        elif surrogate_item == "2nd":
            lhs, mix = gamma * eye + a, gamma * eye + b
        elif surrogate_item == "both":
            lhs, mix = gamma * eye + (1 + gamma) * a, gamma * eye + b + gamma * a
        else:
            raise ClosedFormError(f"surrogate_item must be '1st', '2nd' or 'both', got {surrogate_item!r}")
        rhs = c @ mix.T
    else:
        raise ClosedFormError(f"derivation must be 'regzero', 'standard' or 'surrogate', got {variant!r}")
    # lhs is symmetric: rows of c' solve lhs · c'ᵀ = rhsᵀ
    solution = torch.linalg.solve(lhs, rhs.T).T
    if not torch.isfinite(solution).all():
        raise ClosedFormError("the RECE derivation system is singular; use gamma > 0")
    return solution


def derivation_objective(
    candidate: Tensor,
    concept: Tensor,
    edited: Sequence[Tensor],
    original: Sequence[Tensor],
    *,
    gamma: float,
    target: Tensor | None = None,
) -> Tensor:
    """``Σ_l ‖W'_l c' − W_l c‖² + γ‖c' − c_t‖²`` (``c_t = 0`` when no target): the regzero/standard objective."""
    x, c = candidate.to(torch.float64), concept.to(torch.float64)
    loss = sum((x @ w1.to(torch.float64).T - c @ w0.to(torch.float64).T).square().sum()
               for w1, w0 in zip(edited, original, strict=True))
    reference = torch.zeros_like(x) if target is None else target.to(torch.float64)
    return loss + gamma * (x - reference).square().sum()


def low_rank_factors(delta: Tensor, *, rtol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Factor ``delta ≈ U Vᵀ`` by SVD, keeping singular values above ``rtol · σ_max`` (float64).

    Returns ``(U·S, V)`` so that ``delta = (U S) Vᵀ`` within the truncation tolerance.
    """
    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0], vh[:0].T
    rank = int((s > rtol * s[0]).sum())
    return u[:, :rank] * s[:rank], vh[:rank].T


def steps_product_factors(steps: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``(U, V)`` with ``Π_k (I + X_k Y_kᵀ) − I = U Vᵀ`` exactly (float64, ``Σ n_k`` columns each).

    With ``T_k = T_{k−1}(I + X_k Y_kᵀ) = T_{k−1} + (T_{k−1} X_k) Y_kᵀ``, the columns of ``U`` are ``T_{k−1} X_k`` and
    those of ``V`` are ``Y_k``; ``T_{k−1} X_k = X_k + U_{<k} (V_{<k}ᵀ X_k)`` costs ``O(d n_k Σ n)``, never ``d³``.
    """
    us: list[Tensor] = []
    vs: list[Tensor] = []
    for x, y in steps:
        tx = x if not us else x + torch.cat(us, 1) @ (torch.cat(vs, 1).T @ x)
        us.append(tx.to(torch.float64))
        vs.append(y.to(torch.float64))
    if not us:
        raise ClosedFormError("no steps: the product is the identity")
    return torch.cat(us, 1), torch.cat(vs, 1)


def low_rank_svd(u: Tensor, v: Tensor, *, rtol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """:func:`low_rank_factors` of ``U Vᵀ`` without forming it: QR of both factors, then the SVD of the small
    ``R_U R_Vᵀ`` (``O(d n²)`` instead of ``O(d³)``). The same singular values and truncation as the dense SVD."""
    qu, ru = torch.linalg.qr(u.to(torch.float64))
    qv, rv = torch.linalg.qr(v.to(torch.float64))
    p, s, qh = torch.linalg.svd(ru @ rv.T)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0].to(torch.float64), v[:, :0].to(torch.float64)
    rank = int((s > rtol * s[0]).sum())
    return (qu @ p[:, :rank]) * s[:rank], qv @ qh[:rank].T


GRAM_BLOCKS = 3


def add_gram_upper(out: Tensor, weight: Tensor) -> None:
    """Add the upper block triangle of ``WᵀW`` to ``out`` (float64): ``GRAM_BLOCKS`` column blocks, each multiplied
    only with itself and the blocks to its right, so ~2/3 of the products of a full ``WᵀW``. Complete the result
    with :func:`mirror_upper` after the last layer."""
    d = weight.shape[1]
    step = -(-d // GRAM_BLOCKS)
    for start in range(0, d, step):
        out[start : start + step, start:] += (weight[:, start : start + step].T @ weight[:, start:]).double()


def mirror_upper(gram: Tensor) -> None:
    """Copy the block upper triangle written by :func:`add_gram_upper` into the lower one (in place)."""
    d = gram.shape[0]
    step = -(-d // GRAM_BLOCKS)
    for start in range(step, d, step):
        gram[start : start + step, :start] = gram[:start, start : start + step].T
