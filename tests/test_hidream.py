"""HiDream on a tiny random pipeline: the family is found from the pipeline and ``model_index.json``, its text side
equals the pipeline's own T5 / Llama encoding, the edit equals the official ``uce_hidream_edit.py`` (transcribed in
tests/official_uce_scripts.py), and ``rece fit --config configs/nudity.yaml`` erases: the erased concept's
caption-projection outputs move to the anchor's in every input space while preserved prompts stay within 1e-5."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from rece_lightning.artefacts.export import EDIT_MAP, KV_WEIGHTS, LORA, load_edit_map
from rece_lightning.lightning.cli import main
from rece_lightning.models.families import FluxFamily, HiDreamFamily, StableDiffusion3Family, family_of, family_of_index
from rece_lightning.models.pipeline import load_family
from rece_lightning.recipes.paper import Recipe
from tests.conftest import REPO
from tests.official_uce_scripts import uce_hidream

LENGTH = 8
LAYERS = [("caption_projection.0.linear", "llama0"), ("caption_projection.1.linear", "llama1"),
          ("caption_projection.2.linear", "llama1"), ("caption_projection.3.linear", "tokens")]
PRESERVE = ["a photo of a cat", "a red car"]
FIT_LENGTH, FIT_PRESERVE = 4, ["a cat", "a house"]  # "nudity" fills the 4 Llama rows: no padding row to share


@pytest.fixture(scope="module")
def pipe(tiny_hidream):
    return DiffusionPipeline.from_pretrained(tiny_hidream, torch_dtype=torch.float64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_hidream_is_found_and_reads_caption_projection(tiny_hidream, pipe):
    index = json.loads((tiny_hidream / "model_index.json").read_text())
    assert family_of_index(index) is HiDreamFamily
    assert not StableDiffusion3Family.matches(pipe) and not FluxFamily.matches(pipe)  # it has their slots too
    family = load_family(str(tiny_hidream), max_sequence_length=LENGTH)
    assert type(family) is HiDreamFamily and family.text_only and family.width == 32
    assert [(p.name, p.space) for p in family.text_layers()] == LAYERS
    for p in family.text_layers():
        assert torch.equal(p.module.weight.double(), pipe.transformer.get_submodule(p.name).weight)
    assert family.generation_kwargs() == {"max_sequence_length": LENGTH}


def test_text_side_equals_the_pipeline(pipe):
    """T5 rows as ``_get_t5_prompt_embeds``, each Llama space as ``_get_llama3_prompt_embeds``'s layer."""
    family = family_of(pipe, max_sequence_length=LENGTH)
    texts = ["nudity", " ", "a photo of a cat"]
    encoded = family.text.encode(texts)
    with torch.no_grad():
        t5 = pipe._get_t5_prompt_embeds(texts, LENGTH, "cpu", torch.float64)
        llama = pipe._get_llama3_prompt_embeds(texts, LENGTH, "cpu", torch.float64)
    for i, e in enumerate(encoded):
        torch.testing.assert_close(e.embedding, t5[i], rtol=0, atol=1e-12)
        assert set(e.spaces) == {"llama0", "llama1"}
        for k in (0, 1):
            torch.testing.assert_close(e.spaces[f"llama{k}"].embedding, llama[k][i], rtol=0, atol=1e-12)
    lengths = [pipe.tokenizer_4(t).input_ids for t in texts]
    assert [e.spaces["llama0"].length for e in encoded] == [len(ids) for ids in lengths]


def test_hidream_matches_official_uce(pipe):
    """``tokens: last`` equals ``uce_hidream_edit.py`` on every ``caption_projection`` layer (relative 1e-6): the
    layers have no bias, so the official values ``module(c*)`` are ``W c*`` and the edit is exactly ``W T`` per
    input space."""
    erase, guide, preserve = ["nudity", "Van Gogh"], ["", "art"], PRESERVE
    settings = dict(lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
    recipe = Recipe(family_of(pipe, max_sequence_length=LENGTH), erase, guide,
                    uce={**settings, "preserve": preserve, "tokens": "last"}, rece={"iterations": 0})
    recipe.run("uce", apply=False)
    ours = recipe.editor.current_weights(torch.float64)
    official = uce_hidream(pipe, erase, guide, preserve, max_sequence_length=LENGTH, **settings)
    assert set(ours) == set(official) == {f"{name}.weight" for name, _ in LAYERS}
    for key, w in official.items():
        assert _rel(ours[key], w) < 1e-6, key
        assert _rel(ours[key], pipe.transformer.get_parameter(key)) > 1e-3, key  # it did edit


def test_rece_fit_nudity_preset_erases(tiny_hidream, pipe, tmp_path):
    """``rece fit --config configs/nudity.yaml`` on the HiDream folder finds the family from ``model_index.json`` and
    erases (its UCE stage, preserving two prompts with scale 1e6; RECE's derivation in every space is checked in
    tests/test_families.py): in every input space the concept's aligned rows reach the anchor's outputs (the gap
    falls tenfold or more), preserved prompts' outputs stay within 1e-5, and the exports carry every layer (the
    edit map one map per space)."""
    main(["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--model.pretrained", str(tiny_hidream),
          "--trainer.default_root_dir", str(tmp_path), "--model.torch_dtype", "float64",
          "--model.max_sequence_length", str(FIT_LENGTH), "--model.keep_best", "null", "--model.rece.iterations", "0",
          "--model.uce.preserve", str(FIT_PRESERVE), "--model.uce.preserve_scale", "1e6"])
    (version,) = sorted((tmp_path / "lightning_logs").iterdir())
    export = version / "export"
    kv = load_file(export / KV_WEIGHTS)
    assert set(kv) == {f"{name}.weight" for name, _ in LAYERS}
    assert {k.removeprefix("transformer.").split(".lora_")[0] for k in load_file(export / LORA)} == {
        name for name, _ in LAYERS}
    maps, info = load_edit_map(export / EDIT_MAP)
    spaces = {"tokens", "llama0", "llama1"}
    assert {key.rsplit(".", 1)[0] if "." in key else "tokens" for key in maps} == set(info["spaces"]) == spaces

    text = family_of(pipe, max_sequence_length=FIT_LENGTH).text
    for name, space in LAYERS:
        w0, w1 = pipe.transformer.get_submodule(name).weight, kv[f"{name}.weight"]
        view = text.space(space)
        concept, anchor = view.aligned("nudity", " ")
        gap_before = float((concept @ w0.T - anchor @ w0.T).norm())
        gap_after = float((concept @ w1.T - anchor @ w0.T).norm())
        kept = torch.cat([view.full(t) for t in FIT_PRESERVE])
        drift = _rel(kept @ w1.T, kept @ w0.T)
        print(f"{name} ({space}): concept-anchor gap {gap_before:.4g} -> {gap_after:.4g}, preserved drift {drift:.2g}")
        assert gap_after < 0.1 * gap_before, (name, gap_before, gap_after)
        assert drift < 1e-5, name


def test_hidream_without_t5_is_refused_in_one_line(tiny_hidream, tmp_path, capsys):
    """A HiDream folder whose ``model_index.json`` drops T5 (``text_encoder_3``, which the last caption_projection
    reads): ``rece fit`` exits 2 with one line naming it, no traceback, no run folder."""
    import shutil

    from tests.test_cli_errors import assert_one_line, rece

    folder = tmp_path / "no_t5"
    shutil.copytree(tiny_hidream, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    root = tmp_path / "runs"
    code, _, err = rece(["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--model.pretrained", str(folder),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "no text_encoder_3", "load it with the pipeline")
    assert not root.exists()
