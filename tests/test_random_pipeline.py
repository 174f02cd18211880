"""The random-pipeline builder's ``text`` folders (the denoiser reduced to its text-reading layers) erase exactly as
the whole folder does, and ``python -m rece_lightning.models.random_pipeline`` still runs as a module."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from rece_lightning.lightning.module import RECEModule
from rece_lightning.models.random_pipeline import build_family, save_text_side
from tests.conftest import REPO


def _erase(path):
    module = RECEModule(pretrained=str(path), concepts=["nudity"], validate_original=False, rece={"iterations": 1},
                        max_sequence_length=8)
    assert module.family.text_only
    module.erase()
    return {p.name: p.module.weight.detach().clone() for p in module.family.text_layers()}


def test_text_side_folder_erases_like_the_whole_one(tokenizer_path, tmp_path):
    pipe = build_family("pixart-sigma", "tiny", tokenizer_path)
    pipe.save_pretrained(tmp_path / "whole", safe_serialization=True)
    save_text_side(build_family("pixart-sigma", "tiny", tokenizer_path), tmp_path / "text")
    index = json.loads((tmp_path / "text" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "PixArtTransformer2DModel"] and "vae" in index
    whole, text = _erase(tmp_path / "whole"), _erase(tmp_path / "text")
    assert set(whole) == set(text) == {"caption_projection.linear_1"}
    for name, weight in whole.items():
        torch.testing.assert_close(text[name], weight, rtol=0, atol=0)

    # a denoiser left on the meta device (--size text): only its text-reading layers are materialised and written
    meta = build_family("sana", "tiny", tokenizer_path)
    with torch.device("meta"):
        meta.transformer = type(meta.transformer).from_config(meta.transformer.config)
    save_text_side(meta, tmp_path / "meta")
    written = (tmp_path / "meta" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert written < 20_000  # two small tensors, not the transformer
    layers = _erase(tmp_path / "meta")
    assert list(layers) == ["caption_projection.linear_1"] and torch.isfinite(layers["caption_projection.linear_1"]).all()


def test_module_entry_point_lists_every_family():
    out = subprocess.run([sys.executable, "-m", "rece_lightning.models.random_pipeline", "--help"], capture_output=True,
                         text=True, check=True, cwd=REPO)
    for family in ("sd14", "sd2", "sdxl", "flux", "sd3", "pixart-sigma", "sana"):
        assert family in out.stdout
