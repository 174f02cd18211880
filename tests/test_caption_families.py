"""PixArt-Σ and SANA on tiny random pipelines: the family is found from ``model_index.json``, its text side equals
the pipeline's ``encode_prompt`` as ``__call__`` uses it, the edited layer is ``caption_projection.linear_1``, and
``rece fit --config configs/nudity.yaml`` erases: the erased concept's cross-attention keys and values move to the
anchor's in every block while preserved prompts leave the whole transformer's output unchanged to 1e-5."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from rece_lightning.artefacts.export import KV_WEIGHTS
from rece_lightning.errors import RECEError
from rece_lightning.lightning.cli import main
from rece_lightning.models.families import FAMILIES, PixArtSigmaFamily, SanaFamily, family_of
from rece_lightning.models.pipeline import load_family
from tests.conftest import REPO

FAMILY = {"pixart_sigma": PixArtSigmaFamily, "sana": SanaFamily}
LENGTH = 12  # tokens per text: a concept and two preserved prompts have independent rows in the 64-d embeddings
PRESERVE = ["a photo of a cat", "a red car"]
LAYER = "caption_projection.linear_1"


def _pipe(path, dtype=torch.float64):
    return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype)


@pytest.fixture(params=["pixart_sigma", "sana"])
def model(request):
    return request.param, request.getfixturevalue(f"tiny_{request.param}")


def test_family_text_side_and_layer(model):
    name, path = model
    family = load_family(str(path), max_sequence_length=LENGTH)
    assert type(family) is FAMILY[name] and family.text_only  # from model_index.json, without the transformer
    assert [p.name for p in family.text_layers()] == [LAYER] and family.width == 64
    assert sum(f.matches(_pipe(path)) for f in FAMILIES) == 1  # no other family claims the pipeline
    pipe = _pipe(path, torch.float32)
    real = pipe.transformer.get_submodule(LAYER)
    assert torch.equal(family.text_layers()[0].module.weight, real.weight)
    prompts = ["nudity", " ", "a photo of a cat"]
    defaults = {"clean_caption": True} if name == "pixart_sigma" else {}  # PixArt-Σ's __call__ default
    if name == "sana":  # __call__'s default instruction, which encode_prompt alone does not add
        import inspect

        defaults["complex_human_instruction"] = inspect.signature(
            type(pipe).__call__).parameters["complex_human_instruction"].default
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=LENGTH,
                                          **defaults)[:2]
    encoded = family.text.encode(prompts)
    for i, enc in enumerate(encoded):
        torch.testing.assert_close(enc.embedding, embeds[i].double(), rtol=0, atol=0)
    # length − 2 is the last word's row: "nudity" is one piece after T5's none / Gemma's <bos> + instruction token
    assert encoded[0].length - 2 == (0 if name == "pixart_sigma" else 2)
    with pytest.raises(RECEError, match="token attacks .* not available"):
        family.text.vocabulary()
    with pytest.raises(RECEError, match="more than"):
        family.text.check("a photo " * LENGTH, "concept")


def _transformer_out(pipe, embeds, mask, name):
    gen = torch.Generator().manual_seed(0)
    t = pipe.transformer
    size = t.config.sample_size
    latents = torch.randn(len(embeds), t.config.in_channels, size, size, generator=gen, dtype=torch.float64)
    extra = {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}} if name == "pixart_sigma" else {}
    with torch.no_grad():
        return t(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                 timestep=torch.full((len(embeds),), 500.0, dtype=torch.float64), **extra).sample


def _keys_values(pipe, embeds, name):
    """Every block's ``attn2.to_k`` / ``attn2.to_v`` output for ``embeds`` (what the cross-attention reads)."""
    t = pipe.transformer
    with torch.no_grad():
        y = t.caption_projection(embeds)
        if name == "sana":
            y = t.caption_norm(y)
        return torch.stack([torch.stack([b.attn2.to_k(y), b.attn2.to_v(y)]) for b in t.transformer_blocks])


def test_rece_fit_nudity_preset_erases(model, tmp_path):
    """The preset's UCE stage with two preserved prompts at a strong preserve scale. (Its RECE stages then erase
    derived embeddings, which on a 64-d tiny model overlap the concept's rows and move them on; RECE's derivation is
    checked by ``tests/test_families.py::test_derivation_has_zero_gradient``.)"""
    name, path = model
    main(["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--model.pretrained", str(path),
          "--trainer.default_root_dir", str(tmp_path), "--model.torch_dtype", "float64",
          "--model.max_sequence_length", str(LENGTH), "--model.keep_best", "null", "--model.rece.iterations", "0",
          "--model.uce.preserve", str(PRESERVE), "--model.uce.preserve_scale", "1e6"])
    (version,) = sorted((tmp_path / "lightning_logs").iterdir())
    kv = load_file(version / "export" / KV_WEIGHTS)
    assert set(kv) == {f"{LAYER}.weight"}

    pipe = _pipe(path)
    family = family_of(pipe, max_sequence_length=LENGTH)
    kwargs = family.text.prompt_kwargs
    texts = ["nudity", " ", *PRESERVE]  # the preserved prompts are rows 2:
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(texts, do_classifier_free_guidance=False, max_sequence_length=LENGTH,
                                          **kwargs)[:2]
    before = _pipe(path)
    before_kv = _keys_values(before, embeds, name)
    before_out = _transformer_out(before, embeds[2:], mask[2:], name)
    pipe.transformer.load_state_dict(kv, strict=False)
    after_kv = _keys_values(pipe, embeds, name)
    after_out = _transformer_out(pipe, embeds[2:], mask[2:], name)

    # the concept's keys and values move to the anchor's, row by row with the official token alignment
    rows_c, rows_a = family.text.aligned("nudity", " ")
    anchor = _keys_values(before, rows_a, name)
    gap_before = float((_keys_values(before, rows_c, name) - anchor).norm())
    gap_after = float((_keys_values(pipe, rows_c, name) - anchor).norm())
    assert gap_after < 0.1 * gap_before, (gap_before, gap_after)
    # preserved prompts: the cross-attention reads the same keys / values, and the transformer predicts the same
    rel_kv = float((after_kv[:, :, 2:] - before_kv[:, :, 2:]).norm() / before_kv[:, :, 2:].norm())
    rel_out = float((after_out - before_out).norm() / before_out.norm())
    assert rel_kv < 1e-5 and rel_out < 1e-5, (rel_kv, rel_out)
