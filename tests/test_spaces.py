"""Input spaces (rece_lightning.maths.spaces): the per-space edit equals UCE / RECE in the joint space (the independent
oracle of tests/official_reference.py on zero-padded layers), and the pooled paths of Flux and SD3 are edited as the
official ``uce_flux_edit.py`` edits Flux's (tests/official_uce_scripts.py)."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from torch import nn

from rece_lightning.maths.edit_state import EditState
from rece_lightning.maths.projections import Projection
from rece_lightning.maths.spaces import SpacedEditor
from rece_lightning.models.families import family_of
from rece_lightning.recipes.paper import Recipe
from tests import official_reference as ref
from tests.conftest import SEQ
from tests.official_uce_scripts import solve_module, uce_flux

SETTINGS = dict(lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
ERASE, GUIDE, PRESERVE = ["nudity", "Van Gogh"], ["", "art"], ["a photo of a cat", "painting by Pablo Picasso"]
POOLED = "time_text_embed.text_embedder.linear_1.weight"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _layers(gen: torch.Generator, widths: dict[str, int], count: dict[str, int]) -> list[Projection]:
    layers = []
    for space, d in widths.items():
        for i in range(count[space]):
            linear = nn.Linear(d, 5, bias=False).double()
            with torch.no_grad():
                linear.weight.copy_(torch.randn(5, d, generator=gen, dtype=torch.float64))
            layers.append(Projection(f"{space}{i}", "to_v", linear, "transformer", space))
    return layers


def test_spaces_separate_exactly():
    """UCE and RECE's derivation per space equal the official computation in the joint space ``[c_tokens; c_pooled]``
    with each layer zero-padded outside its own columns (float64, 1e-10): the joint map is block diagonal."""
    gen = torch.Generator().manual_seed(0)
    widths, count = {"tokens": 6, "pooled": 4}, {"tokens": 3, "pooled": 2}
    layers = _layers(gen, widths, count)
    editor = SpacedEditor(layers)
    rows = {s: {t: torch.randn(3 if s == "tokens" else 1, d, generator=gen, dtype=torch.float64)
                for t in ("concept", "anchor", "keep")} for s, d in widths.items()}
    for space in editor.spaces:
        r = rows[space]
        editor.erase([(r["concept"], r["anchor"])], r["keep"], space=space, **SETTINGS)

    def pad(x: torch.Tensor, space: str) -> torch.Tensor:  # a row of one space in the joint space
        return torch.cat([x, torch.zeros(len(x), 4)], 1) if space == "tokens" else torch.cat([torch.zeros(len(x), 6),
                                                                                                x], 1)

    joint_w = [pad(p.module.weight.detach(), p.space) for p in layers]
    pairs = [(pad(rows[s]["concept"], s), pad(rows[s]["anchor"], s)) for s in widths]
    retain = [pad(rows[s]["keep"], s) for s in widths]
    oracle = ref.uce_edit(joint_w, pairs, retain, technique="replace", edit=[True] * len(layers), **SETTINGS)
    ours = editor.current_weights(torch.float64)
    for p, w in zip(layers, oracle, strict=True):
        own = slice(0, 6) if p.space == "tokens" else slice(6, 10)
        other = slice(6, 10) if p.space == "tokens" else slice(0, 6)
        assert _rel(ours[p.key], w[:, own]) < 1e-10
        assert float(w[:, other].abs().max()) < 1e-12  # block diagonal
    # RECE's derivation (eq. 8) of the joint concept = the per-space derivations side by side
    concept = torch.cat([pad(rows["tokens"]["concept"], "tokens"), pad(rows["pooled"]["concept"], "pooled")])
    joint = ref.regzero(oracle, joint_w, concept, gamma=0.1)
    (tokens,) = editor.derive([rows["tokens"]["concept"]], space="tokens", gamma=0.1)
    (pooled,) = editor.derive([rows["pooled"]["concept"]], space="pooled", gamma=0.1)
    assert _rel(tokens, joint[:3, :6]) < 1e-10 and _rel(pooled, joint[3:, 6:]) < 1e-10
    assert float(joint[:3, 6:].abs().max()) < 1e-12 and float(joint[3:, :6].abs().max()) < 1e-12
    # the state keeps every space (snapshots, checkpoints) and restores it
    state = EditState.from_tensors(editor.snapshot().tensors())
    assert set(state.spaces) == {"pooled"}
    editor.reset()
    editor.restore_snapshot(state)
    for key, value in editor.current_weights(torch.float64).items():
        torch.testing.assert_close(value, ours[key], rtol=0, atol=0)


def _flux(path, zero_bias: bool):
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float64)
    if zero_bias:
        with torch.no_grad():
            pipe.transformer.context_embedder.bias.zero_()
            pipe.transformer.time_text_embed.text_embedder.linear_1.bias.zero_()
    return pipe


def _ours(pipe) -> Recipe:
    recipe = Recipe(family_of(pipe, max_sequence_length=SEQ), ERASE, GUIDE,
                    uce={**SETTINGS, "preserve": PRESERVE, "tokens": "last"}, rece={"iterations": 0})
    recipe.run("uce", apply=False)
    return recipe


def test_flux_pooled_path_matches_official_uce(tiny_flux):
    """Both layers ``uce_flux_edit.py`` edits (``context_embedder``, ``time_text_embed.text_embedder.linear_1``)
    equal its computation with zero biases (relative 1e-6); with the biases, each differs from it by exactly the
    rank-one ``b (M⁻¹ σ)ᵀ`` of the bias the official values count twice (rece_lightning.models.families.flux)."""
    pipe = _flux(tiny_flux, zero_bias=True)
    ours = _ours(pipe).editor.current_weights(torch.float64)
    official = uce_flux(pipe, ERASE, GUIDE, PRESERVE, max_sequence_length=SEQ, **SETTINGS)
    assert set(ours) == set(official) == {"context_embedder.weight", POOLED}
    for key, w in official.items():
        assert _rel(ours[key], w) < 1e-6, key
        assert _rel(ours[key], pipe.transformer.get_parameter(key).detach()) > 1e-3, key  # it did edit
    pipe = _flux(tiny_flux, zero_bias=False)
    recipe = _ours(pipe)
    ours = recipe.editor.current_weights(torch.float64)
    official = uce_flux(pipe, ERASE, GUIDE, PRESERVE, max_sequence_length=SEQ, **SETTINGS)
    for key, space in (("context_embedder.weight", "tokens"), (POOLED, "pooled")):
        text = recipe.text.space(space)
        rows = torch.cat([text.last(t) for t in ERASE])
        keep = torch.cat([text.last(t) for t in PRESERVE])
        m = 0.5 * torch.eye(rows.shape[1], dtype=torch.float64) + rows.T @ rows + keep.T @ keep
        bias = pipe.transformer.get_parameter(key.replace(".weight", ".bias")).detach()
        term = torch.outer(bias, torch.linalg.solve(m, rows.sum(0) + keep.sum(0)))
        assert _rel(ours[key] + term, official[key]) < 1e-6, key
        assert float(term.norm()) > 1e-3 * float(official[key].norm()), key


def test_sd3_pooled_projection_is_edited_with_the_official_formula(tiny_sd3):
    """SD3 has no official UCE script; its pooled projection (CLIP-L ⊕ CLIP-G ``text_embeds`` → ``linear_1``) gets
    the ``uce_flux_edit.py`` per-module formula on ``encode_prompt``'s pooled embeddings (zero bias, 1e-6)."""
    pipe = DiffusionPipeline.from_pretrained(tiny_sd3, torch_dtype=torch.float64)
    layer = pipe.transformer.time_text_embed.text_embedder.linear_1
    with torch.no_grad():
        layer.bias.zero_()

    def pooled(text):
        with torch.no_grad():
            return pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                      max_sequence_length=SEQ)[2].double()

    official = solve_module(layer, [pooled(t) for t in ERASE], [pooled(t) for t in GUIDE],
                            [pooled(t) for t in PRESERVE], **SETTINGS)
    ours = _ours(pipe).editor.current_weights(torch.float64)[POOLED]
    assert official.shape == (32, 64) and _rel(ours, official) < 1e-6


def test_flux_pooled_output_of_the_concept_moves_and_its_adversarial_embedding_is_derived(tiny_flux):
    """What the pooled edit adds, in numbers. Without it (the token space alone: the previous behaviour) the
    pooled projection of "nudity" is the original one, at distance ``d₀`` from the anchor's; the UCE edit of the
    pooled space brings it close to the anchor's. RECE then derives a pooled embedding ``c'`` that still gives the
    concept's original output through the edited layer far better than the concept does, and erasing it moves that
    output to the anchor's too: the token derivation alone cannot, since the token layers never read this space."""
    pipe = _flux(tiny_flux, zero_bias=False)
    recipe = Recipe(family_of(pipe, max_sequence_length=SEQ), ["nudity"], " ", rece={"iterations": 1})
    layer = recipe.editor.space("pooled")
    (p,) = layer.projections
    w0, b = layer.original[p.key].double(), p.module.bias.detach().double()
    text = recipe.text.space("pooled")
    concept, anchor = text.full("nudity"), text.full(" ")

    def out(c: torch.Tensor, stage_weights) -> torch.Tensor:
        return c @ stage_weights[p.key].T + b

    original = {p.key: w0}
    d0 = float((out(concept, original) - out(anchor, original)).norm())
    recipe.editor.space("tokens").reset()
    recipe.run("uce", apply=False)
    uce = recipe.editor.current_weights(torch.float64)
    d_uce = float((out(concept, uce) - out(anchor, original)).norm())
    (derived,) = recipe.derive("pooled")
    regenerated = float((out(derived, uce) - out(concept, original)).norm())
    plain = float((out(concept, uce) - out(concept, original)).norm())
    recipe.run("rece-1", apply=False)
    rece = recipe.editor.current_weights(torch.float64)
    d_derived_before = float((out(derived, uce) - out(anchor, original)).norm())
    d_derived_after = float((out(derived, rece) - out(anchor, original)).norm())
    print(f"pooled: d0={d0:.4g} uce={d_uce:.4g} derived regenerates {regenerated:.4g} vs concept {plain:.4g}; "
          f"derived→anchor {d_derived_before:.4g} → {d_derived_after:.4g}")
    assert d_uce < 0.5 * d0
    assert regenerated < 0.75 * plain
    assert d_derived_after < 0.5 * d_derived_before
