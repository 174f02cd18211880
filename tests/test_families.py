"""Model families (SDXL, Flux, SD3) on tiny random pipelines: text side equals the pipelines' ``encode_prompt``, the
official UCE scripts' single-token computation, RECE's derivation oracle, ``rece fit`` / export / LoRA / ``rece
validate`` end to end, and erasing without the denoiser in memory."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from rece_lightning.artefacts.export import EDIT_MAP, KV_WEIGHTS, LORA
from rece_lightning.errors import RECEError
from rece_lightning.lightning.callbacks import ExportEdit
from rece_lightning.lightning.cli import main
from rece_lightning.lightning.data import RECEDataModule
from rece_lightning.lightning.module import RECEModule
from rece_lightning.models.families import family_of
from rece_lightning.models.families.flux import FluxFamily
from rece_lightning.models.families.sd import StableDiffusionFamily
from rece_lightning.models.families.sd3 import StableDiffusion3Family
from rece_lightning.models.families.sdxl import StableDiffusionXLFamily
from rece_lightning.models.generation import pooled_embeddings
from rece_lightning.models.pipeline import load_family
from rece_lightning.recipes.paper import Recipe
from tests.conftest import REPO, SEQ, tree_digest


def _pipe(path: Path, dtype=torch.float64, **components):
    return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, **components)


def _model(request, family: str) -> Path:
    """The tiny pipeline folder of ``family`` (built on first use)."""
    return request.getfixturevalue(f"tiny_{family}")


# ------------------------------------------------------------------------------------------------ the family seam
def test_families_are_chosen_from_the_pipeline(tiny_sdxl, tiny_flux, tiny_sd1):
    assert isinstance(family_of(_pipe(tiny_sdxl, torch.float32)), StableDiffusionXLFamily)
    assert isinstance(family_of(_pipe(tiny_flux, torch.float32), max_sequence_length=SEQ), FluxFamily)
    for path, family in ((tiny_sd1, StableDiffusionFamily), (tiny_sdxl, StableDiffusionXLFamily),
                         (tiny_flux, FluxFamily)):
        loaded = load_family(str(path), max_sequence_length=SEQ)
        assert type(loaded) is family and loaded.text_only  # erasing never loads the denoiser
        assert type(loaded.denoiser).__name__ == "TextLayers"


def test_sd3_is_told_apart_from_flux_and_sdxl(tiny_sd3, tiny_flux, tiny_sdxl, tmp_path):
    """SD3 and Flux both have a transformer and a text_encoder_2; SD3's ``text_encoder_3`` slot (``None`` without
    T5) tells them apart, for pipelines and for ``model_index.json`` alike."""
    pipe = _pipe(tiny_sd3, torch.float32)
    family = family_of(pipe, max_sequence_length=SEQ)
    assert type(family) is StableDiffusion3Family and family.width == 96
    assert not FluxFamily.matches(pipe) and not StableDiffusionXLFamily.matches(pipe)
    for other in (tiny_flux, tiny_sdxl):
        assert not StableDiffusion3Family.matches(_pipe(other, torch.float32))
    loaded = load_family(str(tiny_sd3), max_sequence_length=SEQ)
    assert type(loaded) is StableDiffusion3Family and loaded.text_only
    assert type(loaded.denoiser).__name__ == "TextLayers"
    # without T5 (text_encoder_3 / tokenizer_3 null in model_index.json): still SD3, T5 rows are zeros
    no_t5 = _pipe(tiny_sd3, torch.float32, text_encoder_3=None, tokenizer_3=None)
    assert not FluxFamily.matches(no_t5) and type(family_of(no_t5)) is StableDiffusion3Family
    no_t5.save_pretrained(tmp_path / "no_t5", safe_serialization=True)
    index = json.loads((tmp_path / "no_t5" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None]
    assert not FluxFamily.matches_index({**index, "_class_name": "SomePipeline"})
    loaded = load_family(str(tmp_path / "no_t5"), max_sequence_length=SEQ)
    assert type(loaded) is StableDiffusion3Family and loaded.text.t5_encoder is None
    encoded = loaded.text.encode(["nudity"])[0]
    with torch.no_grad():
        embeds = no_t5.encode_prompt(prompt="nudity", prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                     max_sequence_length=SEQ)[0][0]
    assert encoded.embedding.shape == (77 + SEQ, 96) and not encoded.embedding[77:].any()
    torch.testing.assert_close(encoded.embedding, embeds.double(), rtol=0, atol=0)


def test_sd3_token_attacks_raise_a_clear_error(tiny_sd3):
    family = load_family(str(tiny_sd3), max_sequence_length=SEQ)
    for call in (family.text.vocabulary, lambda: family.text.encode_token_ids(torch.zeros(1, 2, dtype=torch.long)),
                 lambda: family.text.encode_with_prefix(["a"], torch.zeros(1, 2, dtype=torch.long)),
                 lambda: family.prefix_conditioning(["a"], torch.zeros(1, 2, dtype=torch.long))):
        with pytest.raises(RECEError, match="token attacks .* are not available for SD3"):
            call()


def test_unsupported_pipeline_names_the_supported_families(tmp_path):
    with pytest.raises(RECEError, match=r"not a supported model family.*stable-diffusion, sdxl, flux, sd3"):
        family_of(SimpleNamespace(transformer=object(), text_encoder=object()))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline",
                                                           "prior": ["diffusers", "PriorTransformer"]}))
    with pytest.raises(RECEError, match=r"KandinskyPipeline.*supported: stable-diffusion, sdxl, flux, sd3"):
        load_family(str(tmp_path))


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_text_side_equals_encode_prompt(family, request):
    pipe = _pipe(_model(request, family), torch.float32)
    text = family_of(pipe, max_sequence_length=SEQ).text
    prompts = ["nudity", "a photo of a cat", ""]
    encoded = text.encode(prompts)
    with torch.no_grad():
        if family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False)
            assert embeds.shape[-1] == 64  # both encoders' penultimate states, concatenated
        elif family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                      do_classifier_free_guidance=False, max_sequence_length=SEQ)
            assert embeds.shape[1:] == (77 + SEQ, 96) and pooled.shape[-1] == 64  # CLIP rows then T5 rows
            assert not embeds[:, :77, 64:].any()  # the CLIP features, zero-padded to T5's width
            torch.testing.assert_close(pooled_embeddings(pipe, prompts, {"max_sequence_length": SEQ}), pooled)
        else:
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=SEQ)
            assert embeds.shape[1] == SEQ
    for i, enc in enumerate(encoded):
        torch.testing.assert_close(enc.embedding, embeds[i].double(), rtol=0, atol=0)
        torch.testing.assert_close(enc.pooled, pooled[i].double(), rtol=0, atol=0)


def test_stand_in_layers_equal_the_denoiser(tiny_sdxl, tiny_flux, tiny_sd3):
    for path in (tiny_sdxl, tiny_flux, tiny_sd3):
        family = load_family(str(path), max_sequence_length=SEQ)
        denoiser = getattr(_pipe(path, torch.float32), family.denoiser_name)
        names = [p.name for p in type(family).find_layers(denoiser)]
        assert [p.name for p in family.text_layers()] == names  # module order
        for p in family.text_layers():
            real = denoiser.get_submodule(p.name)
            assert torch.equal(p.module.weight, real.weight)
            assert (p.module.bias is None) == (real.bias is None)


# ------------------------------------------------------------------ tokens: last = the official UCE scripts
def _official_uce_last(pipe, erase, guide, preserve, *, lamb, erase_scale, preserve_scale, layers, flux):
    """``uce_sd_erase.py`` / ``uce_flux_edit.py`` re-stated: one row per text at ``attention_mask.sum() − 2``, values
    ``module(c)`` of the original layers (with their bias), ``W' = (λW + Σ s v cᵀ)(λI + Σ s c cᵀ)⁻¹``."""

    def emb(text):
        with torch.no_grad():
            if flux:
                t = pipe.encode_prompt(prompt=text, prompt_2=None, max_sequence_length=SEQ)
                mask = pipe.tokenizer_2(text, padding="max_length", max_length=SEQ, truncation=True,
                                        return_tensors="pt")["attention_mask"]
            else:
                t = pipe.encode_prompt(prompt=text, device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)
                mask = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")["attention_mask"]
        return t[0][:, mask.sum() - 2, :].double()

    out = {}
    for name, module in layers:
        w = module.weight.double()
        mat1, mat2 = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64)
        with torch.no_grad():
            for e, g in zip(erase, guide, strict=True):
                c, v = emb(e).T, module(emb(g)).double().T
                mat1 += erase_scale * (v @ c.T)
                mat2 += erase_scale * (c @ c.T)
            for p in preserve:
                c, v = emb(p).T, module(emb(p)).double().T
                mat1 += preserve_scale * (v @ c.T)
                mat2 += preserve_scale * (c @ c.T)
        out[f"{name}.weight"] = mat1 @ torch.inverse(mat2)
    return out


SETTINGS = dict(lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
ERASE, GUIDE, PRESERVE = ["nudity", "Van Gogh"], ["", "art"], ["a photo of a cat", "painting by Pablo Picasso"]


def _ours(pipe, tokens="last"):
    recipe = Recipe(family_of(pipe, max_sequence_length=SEQ), ERASE, GUIDE,
                    uce={**SETTINGS, "preserve": PRESERVE, "tokens": tokens}, rece={"iterations": 0})
    recipe.run("uce", apply=False)
    return recipe


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_sdxl_last_token_matches_official_uce(tiny_sdxl):
    pipe = _pipe(tiny_sdxl)
    ours = _ours(pipe).editor.current_weights(torch.float64)
    layers = [(p.name, p.module) for p in StableDiffusionXLFamily.find_layers(pipe.unet)]
    official = _official_uce_last(pipe, ERASE, GUIDE, PRESERVE, layers=layers, flux=False, **SETTINGS)
    assert set(ours) == set(official) and len(ours) == 24
    for key, w in official.items():
        assert _rel(ours[key], w) < 1e-6, key
    assert max(_rel(ours[k], layers_w) for k, layers_w in
               ((f"{n}.weight", m.weight.detach().double()) for n, m in layers)) > 1e-3  # it did edit


def test_flux_last_token_matches_official_uce(tiny_flux):
    """Equal to ``uce_flux_edit.py`` with a zero bias; with a bias, ours solves UCE's objective with the bias kept
    (``W T``) while the official targets ``W c* + b`` for the bias-free ``W' c``: the difference is exactly
    ``b (M⁻¹ σ)ᵀ``, ``M = λI + Σ s c cᵀ``, ``σ = Σ s c`` (see rece_lightning.models.families.flux)."""
    pipe = _pipe(tiny_flux)
    layer = pipe.transformer.context_embedder
    assert layer.bias is not None
    bias = layer.bias.detach().clone()
    with torch.no_grad():
        layer.bias.zero_()
    ours = _ours(pipe).editor.current_weights(torch.float64)["context_embedder.weight"]
    official = _official_uce_last(pipe, ERASE, GUIDE, PRESERVE, layers=[("context_embedder", layer)], flux=True,
                                  **SETTINGS)["context_embedder.weight"]
    assert _rel(ours, official) < 1e-6
    with torch.no_grad():
        layer.bias.copy_(bias)
    recipe = _ours(pipe)
    ours = recipe.editor.current_weights(torch.float64)["context_embedder.weight"]
    official = _official_uce_last(pipe, ERASE, GUIDE, PRESERVE, layers=[("context_embedder", layer)], flux=True,
                                  **SETTINGS)["context_embedder.weight"]
    text = recipe.text
    rows = torch.cat([text.last(t) for t in ERASE])
    keep = torch.cat([text.last(t) for t in PRESERVE])
    m = 0.5 * torch.eye(rows.shape[1], dtype=torch.float64) + rows.T @ rows + keep.T @ keep
    sigma = rows.sum(0) + keep.sum(0)
    term = torch.outer(bias.double(), torch.linalg.solve(m, sigma))
    assert _rel(ours + term, official) < 1e-6
    assert float(term.norm()) > 1e-3 * float(official.norm())  # the bias term is real, not round-off


# ------------------------------------------------------------------------- RECE's derivation: zero gradient
@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3", "hidream", "pixart_sigma", "sana"])
def test_derivation_has_zero_gradient(family, request):
    """``c' = argmin Σ_l ‖W'_l c' − W_l c‖² + γ‖c'‖²`` (RECE eq. 8, regzero): its gradient vanishes, computed
    layer by layer from the edited and original weights, in each of the family's input spaces (Flux and SD3: the
    tokens and the pooled embedding, derived beside each other; HiDream: T5 and each Llama layer read)."""
    pipe = _pipe(_model(request, family))
    recipe = Recipe(family_of(pipe, max_sequence_length=SEQ), ["nudity"], " ", rece={"iterations": 1, "gamma": 0.1})
    recipe.run("uce", apply=False)
    widths = {"sdxl": {"tokens": 64}, "flux": {"tokens": 32, "pooled": 32}, "sd3": {"tokens": 96, "pooled": 64},
              "hidream": {"tokens": 32, "llama0": 64, "llama1": 64},
              "pixart_sigma": {"tokens": 64}, "sana": {"tokens": 64}}
    assert {s: recipe.editor.space(s).dim for s in recipe.editor.spaces} == widths[family]
    edited = recipe.editor.current_weights(torch.float64)
    for space in recipe.editor.spaces:
        concept = recipe.text.space(space).full("nudity")
        (derived,) = recipe.derive(space)
        assert derived.shape == concept.shape and derived.shape[1] == widths[family][space]
        grad = 0.1 * derived
        for p in recipe.editor.space(space).projections:
            w1, w0 = edited[p.key], recipe.editor.original[p.key].double()
            grad = grad + (derived @ w1.T - concept @ w0.T) @ w1
        assert float(grad.norm()) < 1e-8 * float((concept @ w0.T @ w1).norm()), space


# ----------------------------------------------------------------------------------------- end to end
def _prompts(tmp_path: Path) -> Path:
    csv = tmp_path / "nudity.csv"  # the presets' NudeNet metric scores the rows of nudity.csv
    csv.write_text("prompt,evaluation_seed\nnudity,1\na photo of a cat,2\n")
    return csv


def _fit(config: str, model: Path, root: Path, prompts: Path | None, *extra: str) -> Path:
    args = ["fit", "--config", str(REPO / "configs" / config), "--model.pretrained", str(model),
            "--trainer.default_root_dir", str(root), "--model.generation.num_inference_steps", "2",
            "--model.generation.height", "32", "--model.generation.width", "32", "--model.torch_dtype", "float32",
            "--data.batch_size", "2", "--model.keep_best", "null", "--model.rece.iterations", "1", *extra]
    if prompts is not None:
        args += ["--data.val_prompts", str(prompts)]
    main(args)
    (version,) = sorted((root / "lightning_logs").iterdir())
    return version


def _image(pipe, **kwargs):
    return pipe("nudity", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images[0]


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_fit_export_lora_validate_end_to_end(family, request, tmp_path):
    model = _model(request, family)
    config = f"nudity_{family}.yaml"
    extra = ("--model.max_sequence_length", str(SEQ)) if family != "sdxl" else ()
    before = tree_digest(model)
    version = _fit(config, model, tmp_path / "run", _prompts(tmp_path), *extra)
    assert tree_digest(model) == before, "the source model folder was modified"
    export = version / "export"
    assert {KV_WEIGHTS, EDIT_MAP, LORA} <= {p.name for p in export.iterdir()}
    kv = load_file(export / KV_WEIGHTS)
    prefix = "unet" if family == "sdxl" else "transformer"
    assert all(k.startswith(f"{prefix}.") for k in load_file(export / LORA))
    if family != "sdxl":  # the tokens' and the pooled embedding's layer (rece_lightning.maths.spaces)
        assert set(kv) == {"context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"}
    else:
        assert len(kv) == 24 and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in kv)

    # the kv weights and the LoRA generate the same images with the family's own pipeline
    kwargs = {"max_sequence_length": SEQ} if family != "sdxl" else {}
    edited = _pipe(model, torch.float32)
    denoiser = getattr(edited, prefix)
    original = _image(edited, **kwargs)
    result = denoiser.load_state_dict(kv, strict=False)
    assert not result.unexpected_keys
    with_kv = _image(edited, **kwargs)
    lora = _pipe(model, torch.float32)
    lora.load_lora_weights(export, weight_name=LORA)
    with_lora = _image(lora, **kwargs)
    assert np.abs(with_kv - original).max() > 1e-4  # the edit changes the image
    np.testing.assert_allclose(with_lora, with_kv, atol=2e-4)

    # rece validate restores the checkpoint onto the base model
    ckpt = version / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["state_dict"] == {} and set(state["rece"]["base"]) == set(kv)  # the edit only, rebuilt on load
    main(["validate", "--config", str(REPO / "configs" / config), "--model.pretrained", str(model),
          "--model.torch_dtype", "float32", "--model.generation.num_inference_steps", "2",
          "--model.generation.height", "32", "--model.generation.width", "32", "--data.val_prompts",
          str(_prompts(tmp_path)), "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path / "val"),
          *extra])
    metrics = list((tmp_path / "val").rglob("metrics*")) + list((tmp_path / "val").rglob("events.out.*"))
    assert metrics


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux", "sd3"])
def test_fit_without_validation_never_loads_the_denoiser(family, request, tmp_path):
    model = _model(request, family)
    module = RECEModule(pretrained=str(model), concepts=["nudity"], validate_original=False,
                        rece={"iterations": 1}, max_sequence_length=SEQ)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[ExportEdit(dirpath=str(tmp_path))])
    trainer.fit(module, datamodule=RECEDataModule())
    assert module.stage == "rece-1"
    assert module.family.text_only, "the denoiser was loaded although nothing was generated"
    kv = load_file(tmp_path / KV_WEIGHTS)
    # the same edit as with the whole pipeline loaded
    whole = RECEModule(pretrained=str(model), concepts=["nudity"], validate_original=False, rece={"iterations": 1},
                       max_sequence_length=SEQ)
    whole.load_denoiser()
    assert not whole.family.text_only
    whole.erase()
    denoiser = getattr(whole.family.pipeline, whole.family.denoiser_name)
    for key, value in kv.items():
        torch.testing.assert_close(denoiser.get_parameter(key), value, rtol=1e-6, atol=1e-7)
