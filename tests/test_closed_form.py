"""The closed forms are the minimisers of their stated objectives (oracles: least squares and autograd)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rece_lightning.maths import closed_form as cf

D, OUT = 12, 7


def _data(seed: int = 0, n: int = 5, m: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, D, generator=g, dtype=dtype)
    c = torch.randn(n, D, generator=g, dtype=dtype)
    t = torch.randn(n, D, generator=g, dtype=dtype)
    p = torch.randn(m, D, generator=g, dtype=dtype)
    return w, c, t, p


def _lstsq_uce(w, c, v, p, lamb, se, sp):
    """Stack UCE's three quadratic terms as one least-squares problem in W'ᵀ and solve it."""
    eye = torch.eye(D, dtype=torch.float64)
    x = torch.cat([lamb**0.5 * eye, se**0.5 * c, sp**0.5 * p])
    y = torch.cat([lamb**0.5 * w.T, se**0.5 * v, sp**0.5 * (p @ w.T)])
    return torch.linalg.lstsq(x, y).solution.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("lamb", "se", "sp"), [(0.5, 1.0, 1.0), (0.1, 1.0, 0.1), (2.0, 0.3, 0.0)])
def test_uce_map_is_least_squares_minimiser(dtype, lamb, se, sp):
    w, c, t, p = _data(dtype=dtype)
    w, c, t, p = (x.double() for x in (w, c, t, p))
    T = cf.uce_map(c.to(dtype), t.to(dtype), p.to(dtype), lamb=lamb, erase_scale=se, preserve_scale=sp)
    assert T.dtype == torch.float64
    expected = _lstsq_uce(w, c, t @ w.T, p, lamb, se, sp)
    assert_close(w @ T, expected, rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=1e-6 if dtype == torch.float32 else 1e-10)


def test_uce_layer_has_zero_gradient_and_matches_map():
    w, c, t, p = _data(1)
    v = torch.randn(c.shape[0], OUT, dtype=torch.float64)
    kw = dict(lamb=0.3, erase_scale=1.0, preserve_scale=0.5)
    w1 = cf.uce_layer(w, c, v, p, **kw).requires_grad_(True)
    cf.uce_objective(w1, w, c, v, p, **kw).backward()
    assert w1.grad.abs().max() < 1e-9
    # "replace" values v* = W c* make the per-layer edit equal to the shared map
    assert_close(cf.uce_layer(w, c, t @ w.T, p, **kw), w @ cf.uce_map(c, t, p, **kw))


def test_edit_map_is_low_rank():
    _, c, t, p = _data(2, n=3)
    T = cf.uce_map(c, t, p, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    us, v = cf.low_rank_factors(T - torch.eye(D, dtype=torch.float64))
    assert us.shape[1] == 3  # rank ≤ erased token rows
    assert_close(us @ v.T, T - torch.eye(D, dtype=torch.float64))


def test_factored_step_and_congruence_update_match_dense_products():
    _, c, t, p = _data(3, n=4)
    kw = dict(lamb=0.2, erase_scale=0.7, preserve_scale=0.3)
    x, y = cf.uce_factors(c, t, p, **kw)
    assert x.shape == y.shape == (D, 4)
    step = cf.uce_map(c, t, p, **kw)
    assert_close(torch.eye(D, dtype=torch.float64) + x @ y.T, step)
    a = torch.randn(D, D, dtype=torch.float64)
    a = a @ a.T
    assert_close(cf.congruence_update(a, x, y), step.T @ a @ step, rtol=1e-12, atol=1e-10)


def test_product_of_steps_in_factored_form_equals_the_dense_product():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(D, 2, generator=g, dtype=torch.float64)
    # the third step repeats the first step's directions: T − I has rank 5, not 7
    steps = [(x0, torch.randn(D, 2, generator=g, dtype=torch.float64)),
             (torch.randn(D, 3, generator=g, dtype=torch.float64), torch.randn(D, 3, generator=g, dtype=torch.float64)),
             (x0 @ torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(D, 2, generator=g, dtype=torch.float64))]
    steps = [(0.3 * x, 0.3 * y) for x, y in steps]
    eye = torch.eye(D, dtype=torch.float64)
    t = eye.clone()
    for x, y in steps:
        t = t @ (eye + x @ y.T)
    u, v = cf.steps_product_factors(steps)
    assert u.shape == v.shape == (D, 7)
    assert_close(u @ v.T, t - eye, rtol=1e-12, atol=1e-12)
    # the thin SVD equals the dense one: same rank, singular values and product
    us, vs = cf.low_rank_svd(u, v)
    us_dense, vs_dense = cf.low_rank_factors(t - eye)
    assert us.shape[1] == us_dense.shape[1] == int(torch.linalg.matrix_rank(t - eye))
    assert_close(us.norm(dim=0), us_dense.norm(dim=0), rtol=1e-10, atol=1e-12)
    assert_close(us @ vs.T, t - eye, rtol=1e-10, atol=1e-12)
    assert_close(vs.T @ vs, torch.eye(us.shape[1], dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_tensor_values_remove_the_concept_direction():
    w, c, t, _ = _data(3)
    v = cf.tensor_values(w, c, t)
    u = c @ w.T
    # the values are orthogonal (Frobenius inner product) to the concept's outputs
    assert abs(float((v * u).sum())) < 1e-9 * float(u.norm() * v.norm())
    assert_close(v, t @ w.T - ((u / u.norm()) * (t @ w.T)).sum() * (u / u.norm()))


def _grams(n_layers: int = 4, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    original = [torch.randn(OUT, D, generator=g, dtype=torch.float64) for _ in range(n_layers)]
    edited = [w + 0.3 * torch.randn(OUT, D, generator=g, dtype=torch.float64) for w in original]
    a = sum(w1.T @ w1 for w1 in edited)
    b = sum(w1.T @ w0 for w1, w0 in zip(edited, original, strict=True))
    return original, edited, a, b


@pytest.mark.parametrize("gamma", [1e-3, 0.1, 1.0])
@pytest.mark.parametrize("variant", ["regzero", "standard"])
def test_derivation_has_zero_gradient(variant, gamma):
    original, edited, a, b = _grams()
    c = torch.randn(6, D, dtype=torch.float64)
    target = torch.randn(6, D, dtype=torch.float64) if variant == "standard" else None
    x = cf.derive_embeddings(c, a, b, gamma=gamma, variant=variant, target=target).requires_grad_(True)
    loss = cf.derivation_objective(x, c, edited, original, gamma=gamma, target=target)
    loss.backward()
    assert x.grad.abs().max() < 1e-8 * (1 + loss.item())
    # and it is the minimum: a perturbation increases the objective
    with torch.no_grad():
        worse = cf.derivation_objective(x + 1e-3 * torch.randn_like(x), c, edited, original, gamma=gamma, target=target)
    assert worse > loss


@pytest.mark.parametrize("item", ["1st", "2nd", "both"])
def test_surrogate_derivation_minimises_its_objective(item):
    original, edited, a, b = _grams(seed=7)
    gamma = 0.2
    c = torch.randn(5, D, dtype=torch.float64)
    x = cf.derive_embeddings(c, a, b, gamma=gamma, variant="surrogate", surrogate_item=item).requires_grad_(True)
    loss = sum((x @ w1.T - c @ w0.T).square().sum() for w1, w0 in zip(edited, original, strict=True))
    if item in ("1st", "both"):  # γ Σ‖W'c' − W'c‖²
        loss = loss + gamma * sum(((x - c) @ w1.T).square().sum() for w1 in edited)
    if item in ("2nd", "both"):  # γ‖c' − c‖²
        loss = loss + gamma * (x - c).square().sum()
    loss.backward()
    assert x.grad.abs().max() < 1e-8 * (1 + loss.item())


def test_official_formula_of_regzero():
    _, _, a, b = _grams(seed=11)
    c = torch.randn(4, D, dtype=torch.float64)
    expected = c @ (torch.inverse(0.1 * torch.eye(D, dtype=torch.float64) + a) @ b).T
    assert_close(cf.derive_embeddings(c, a, b, gamma=0.1), expected)


def test_bad_input_is_reported():
    w, c, t, p = _data()
    with pytest.raises(cf.ClosedFormError, match="lamb"):
        cf.uce_map(c, t, p, lamb=0.0)
    with pytest.raises(cf.ClosedFormError, match="non-finite"):
        cf.uce_map(c.clone().fill_(float("nan")), t, p, lamb=0.1)
    with pytest.raises(cf.ClosedFormError, match="pair row by row"):
        cf.uce_map(c, t[:2], p, lamb=0.1)
    with pytest.raises(cf.ClosedFormError, match="singular"):
        cf.uce_map(c, t, p, lamb=1e-20, erase_scale=1.0, preserve_scale=0.0)
    _, _, a, b = _grams()
    with pytest.raises(cf.ClosedFormError, match="target"):
        cf.derive_embeddings(c, a, b, gamma=0.1, variant="standard")
    with pytest.raises(cf.ClosedFormError, match="derivation"):
        cf.derive_embeddings(c, a, b, gamma=0.1, variant="bogus")  # type: ignore[arg-type]
