"""Fast tests of the procedural testbed: renderer, captions, prompt CSVs, shipped weights."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rece_lightning.testbed import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    CONCEPTS,
    PATTERNS,
    SHAPES,
    TESTBED_DIR,
    WEIGHTS_DIR,
    Scene,
    build_prompt_rows,
    classify,
    generate,
    load_prompts,
    load_testbed_classifier,
    load_testbed_pipeline,
    minilm_dir,
    random_scene,
    render,
    render_array,
)
from rece_lightning.testbed.captions import (
    HELDOUT_TEMPLATES,
    SHAPE_WORDS,
    TRAIN_TEMPLATES,
    sample_training_pair,
)
from rece_lightning.testbed.data import make_set
from rece_lightning.testbed.prompts import CSV_COLUMNS, KINDS, N_IMPLICIT, TESTBED_CONCEPTS, prompt_csv
from rece_lightning.testbed.render import shape_mask
from rece_lightning.testbed.world import BACKGROUND_RGB, COLOR_RGB

torch.set_num_threads(min(2, torch.get_num_threads()))


# ----------------------------------------------------------------------------- world / renderer
def test_random_scene_is_deterministic_and_respects_fixed_attributes() -> None:
    a = random_scene(np.random.default_rng(7), shape="star", color="blue")
    b = random_scene(np.random.default_rng(7), shape="star", color="blue")
    assert a == b
    assert (a.shape, a.color) == ("star", "blue")
    assert a.pattern in PATTERNS and a.background in BACKGROUNDS
    with pytest.raises(ValueError):
        Scene("hexagon", "red", "solid", "black")


def test_render_is_deterministic() -> None:
    scene = random_scene(np.random.default_rng(3))
    assert np.array_equal(render_array(scene), render_array(scene))
    img = render(scene)
    assert img.size == (32, 32) and img.mode == "RGB"


@pytest.mark.parametrize("shape", SHAPES)
def test_render_ground_truth_colours(shape: str) -> None:
    for color in COLORS:
        scene = Scene(shape, color, "solid", "gray", size=22.0)
        img = render_array(scene)
        mask = shape_mask(scene)
        inside, outside = mask > 0.99, mask < 0.01
        assert inside.sum() > 60, "shape must cover a reasonable area"
        np.testing.assert_allclose(img[inside].mean(0), np.array(COLOR_RGB[color]) / 255, atol=1e-3)
        np.testing.assert_allclose(img[outside].mean(0), np.array(BACKGROUND_RGB["gray"]) / 255, atol=1e-3)


def test_render_patterns_differ_and_match_definition() -> None:
    base = dict(shape="square", color="red", background="black", size=24.0)
    imgs = {p: render_array(Scene(pattern=p, **base)) for p in PATTERNS}  # type: ignore[arg-type]
    red = np.array(COLOR_RGB["red"]) / 255
    # solid: the centre is the colour; outlined: the centre is the background
    assert np.allclose(imgs["solid"][16, 16], red, atol=1e-3)
    assert np.allclose(imgs["outlined"][16, 16], np.array(BACKGROUND_RGB["black"]) / 255, atol=1e-3)
    # striped: rows alternate bright/dark with period 4 inside the shape
    col = imgs["striped"][10:22, 16, 0]
    assert (col.max() - col.min()) > 0.4 and np.allclose(col[:4], col[4:8])
    # dotted: both bright and dark pixels along rows and columns
    patch = imgs["dotted"][12:20, 12:20, 0]
    assert (patch < 0.5).mean() > 0.1 and (patch > 0.7).mean() > 0.5
    for p, q in [("solid", "striped"), ("striped", "dotted"), ("solid", "outlined")]:
        assert np.abs(imgs[p] - imgs[q]).mean() > 0.02


# ----------------------------------------------------------------------------- captions / CSVs
def test_training_captions_name_their_scene_and_avoid_heldout_templates() -> None:
    rng = np.random.default_rng(0)
    heldout_markers = ("illustration showing", "whose color is", "symbol", "simple graphic", "please render", "here is")
    assert not set(HELDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)
    for _ in range(500):
        scene, caption = sample_training_pair(rng)
        assert caption and caption == caption.strip()
        assert not any(m in caption for m in heldout_markers), caption
        named = [s for s, words in SHAPE_WORDS.items() if any(w in caption for w in words)]
        assert not named or scene.shape in named, (caption, scene)


@pytest.mark.parametrize("concept", list(CONCEPTS))
def test_prompt_csv_schema_and_determinism(concept: str) -> None:
    c = CONCEPTS[concept]
    with open(c.csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert rows == load_prompts(concept)
    expected = [{k: str(v) for k, v in r.items()} for r in build_prompt_rows(concept)]
    assert rows == expected, "shipped CSV must equal the deterministic generator output"
    assert {r["kind"] for r in rows} == set(KINDS)
    check_prompt_rows(concept, rows)


def check_prompt_rows(concept: str, rows: list[dict[str, str]]) -> None:
    """The schema and ground truth of a concept's prompt rows (shipped or generated)."""
    c = TESTBED_CONCEPTS[concept]
    assert [int(r["case_number"]) for r in rows] == list(range(len(rows)))
    assert len(rows) >= 180
    for r in rows:
        int(r["evaluation_seed"])
        for attr in ("shape", "color", "pattern", "background"):
            assert r[attr] == "" or r[attr] in ATTRIBUTES[attr]
        has_concept = r[c.attribute] == c.name
        if r["kind"] in ("explicit", "paraphrase", "implicit"):
            assert has_concept, r
        else:
            assert r[c.attribute] and not has_concept, r
        if r["kind"] == "implicit":
            assert c.name not in r["prompt"] and "stripe" not in r["prompt"].replace("pinstripe", ""), r


@pytest.mark.parametrize("concept", list(TESTBED_CONCEPTS))
def test_every_world_value_has_a_prompt_set(concept: str, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``testbed:<value>`` for every shape, colour and pattern: the triangle's kinds and sizes (implicit rows only
    where the world has a cue for the value), deterministic, and the shipped files untouched."""
    from rece_lightning.lightning.data import read_prompts, resolve_prompts

    monkeypatch.setenv("RECE_CACHE_DIR", str(tmp_path))
    c = TESTBED_CONCEPTS[concept]
    path = resolve_prompts(f"testbed:{concept}")
    assert path.is_file()
    if concept in CONCEPTS:
        assert str(path) == c.csv_path  # the shipped file, not a generated copy
    else:
        assert tmp_path in path.parents
    rows = load_prompts(concept)
    assert rows == [{k: str(v) for k, v in r.items()} for r in build_prompt_rows(concept)]
    check_prompt_rows(concept, rows)
    shipped = {k: sum(r["kind"] == k for r in load_prompts("triangle")) for k in KINDS}
    counts = {k: sum(r["kind"] == k for r in rows) for k in KINDS}
    assert counts == {**shipped, "implicit": N_IMPLICIT if c.implicit_cues() else 0}
    assert sorted(c.neighbours() + [concept]) == sorted(ATTRIBUTES[c.attribute])
    assert len(read_prompts(f"testbed:{concept}")) == len(rows)
    before = path.stat().st_mtime_ns
    assert prompt_csv(concept) == str(path) and path.stat().st_mtime_ns == before  # not rewritten when unchanged


def test_unknown_testbed_value_is_refused() -> None:
    from rece_lightning.errors import RECEError
    from rece_lightning.testbed.prompts import testbed_concept

    with pytest.raises(RECEError, match="not a testbed concept"):
        testbed_concept("hexagon")


# ----------------------------------------------------------------------------- shipped weights
def test_shipped_weights_are_small_safetensors_without_text_encoder() -> None:
    total = 0
    for root, _, files in os.walk(WEIGHTS_DIR):
        for f in files:
            assert not f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")), f
            total += os.path.getsize(os.path.join(root, f))
    assert total < 40 * 2**20
    assert not os.path.exists(os.path.join(TESTBED_DIR, "text_encoder"))
    assert os.path.isfile(os.path.join(minilm_dir(), "config.json"))


def test_classifier_is_accurate_on_fresh_renders() -> None:
    data = make_set(300, seed=4242)
    pred = classify(torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255.0, load_testbed_classifier())
    for i, attr in enumerate(ATTRIBUTES):
        acc = np.mean([ATTRIBUTES[attr].index(p) == y for p, y in zip(pred[attr], data.labels[:, i], strict=True)])
        assert acc >= 0.97, (attr, acc)
    # PIL input path gives the same answer
    pil = [render(random_scene(np.random.default_rng(5), shape="heart", color="green", pattern="solid"))]
    out = classify(pil)
    assert out["shape"] == ["heart"] and out["color"] == ["green"]
    assert out["shape_prob"].shape == (1, len(SHAPES))


@pytest.fixture(scope="module")
def pipe():  # noqa: ANN201 - diffusers type
    return load_testbed_pipeline()


def test_pipeline_is_a_standard_stable_diffusion_pipeline(pipe) -> None:  # noqa: ANN001
    from diffusers import StableDiffusionPipeline
    from transformers import BertModel

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.text_encoder, BertModel)
    k = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_k")]
    v = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_v")]
    assert k and len(k) == len(v)
    assert all(isinstance(m, torch.nn.Linear) and m.in_features == 384 for m in k + v)
    out = pipe("a red triangle", num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (32, 32)
    again = pipe(
        "a red triangle", num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)
    )
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(again.images[0]))


def test_generation_quality_loose(pipe) -> None:  # noqa: ANN001
    rows = []
    for concept in CONCEPTS:
        all_rows = load_prompts(concept)
        rows += [r for r in all_rows if r["kind"] == "paraphrase"][:12]
        rows += [r for r in all_rows if r["kind"] == "implicit"][:8]
    images = generate(pipe, [r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows])
    pred = classify(images)
    para = [i for i, r in enumerate(rows) if r["kind"] == "paraphrase"]
    shape_ok = np.mean([pred["shape"][i] == rows[i]["shape"] for i in para])
    color_ok = np.mean([pred["color"][i] == rows[i]["color"] for i in para])
    impl = [i for i, r in enumerate(rows) if r["kind"] == "implicit"]
    concept_ok = np.mean([pred[CONCEPTS[rows[i]["concept"]].attribute][i] == rows[i]["concept"] for i in impl])
    assert shape_ok >= 0.7 and color_ok >= 0.7, (shape_ok, color_ok)
    assert concept_ok >= 0.6, concept_ok


@pytest.mark.parametrize("concept", ["triangle", "star", "striped", "dotted", "red", "purple"])
def test_every_testbed_value_has_ring_a_bell_pairs(concept, tmp_path, monkeypatch):
    """``testbed:<value>-ring-a-bell`` resolves for every shape, pattern and colour (shipped or generated into the
    cache); each pair's prompts differ by the concept's word alone, and a shipped file holds what would be generated."""
    from rece_lightning.attacks.ring_a_bell import read_pairs
    from rece_lightning.testbed.ring_a_bell import _csv_text, pairs_csv

    monkeypatch.setenv("RECE_CACHE_DIR", str(tmp_path))
    pairs = read_pairs(f"testbed:{concept}-ring-a-bell")
    assert len(pairs) >= 20
    for sensitive, normal in pairs:
        words = sensitive.split()
        assert concept in words and " ".join(w for w in words if w != concept) in (normal, normal.replace(" shape", ""))
    path = Path(pairs_csv(concept))
    assert path.read_bytes().decode("utf-8") == _csv_text(concept)
    assert path.is_relative_to(tmp_path) == (concept not in ("triangle", "striped"))
