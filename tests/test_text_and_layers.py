"""Token alignment on real CLIP tokenisation, and layer discovery on SD1- and SD2-shaped UNets."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from transformers import CLIPTokenizer

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import check_kv_weights, find_projections, read_weights, write_weights
from rece_lightning.models.random_pipeline import build_random_pipeline
from rece_lightning.models.text import EncodedText, TextEncoder, align_tokens


def _encoded(tokenizer, text: str) -> EncodedText:
    tokens = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    rows = torch.arange(77, dtype=torch.float64)[:, None].expand(77, 3)  # row index as the "embedding"
    return EncodedText(text, rows, int(tokens.attention_mask[0].sum()))


@pytest.mark.parametrize(
    ("concept", "anchor", "concept_rows", "anchor_rows"),
    [
        ("nudity", " ", (2, 77), (0, 75)),  # nu, dity → i = 2; j = 0; f = 2
        ("nudity", "", (2, 77), (0, 75)),
        ("Van Gogh", "art", (2, 77), (1, 76)),  # van, gogh → i = 2; art → j = 1
        ("cat", "a photo of a dog", (1, 73), (5, 77)),  # anchor longer: i = 1, j = 5, f = 5
    ],
)
def test_official_token_alignment(tokenizer_path, concept, anchor, concept_rows, anchor_rows):
    tok = CLIPTokenizer.from_pretrained(tokenizer_path)
    c, a = align_tokens(_encoded(tok, concept), _encoded(tok, anchor))
    assert (int(c[0, 0]), int(c[-1, 0]) + 1) == concept_rows
    assert (int(a[0, 0]), int(a[-1, 0]) + 1) == anchor_rows
    assert c.shape == a.shape


def test_real_tokenizer_counts(tokenizer_path):
    tok = CLIPTokenizer.from_pretrained(tokenizer_path)
    assert len(tok("nudity").input_ids) == 4  # <start> nu dity <end>: real BPE, not a toy vocabulary
    assert len(tok(" ").input_ids) == 2
    sd2 = CLIPTokenizer.from_pretrained(tokenizer_path, pad_token="!")
    ids = sd2("nudity", padding="max_length", max_length=77, return_tensors="pt")
    assert int(ids.input_ids[0, -1]) == sd2.convert_tokens_to_ids("!")
    assert int(ids.attention_mask.sum()) == 4  # padding with "!" is still padding


@pytest.mark.parametrize("shape", ["tiny", "tiny-sd2"])
def test_encoder_caches_and_rejects_long_text(tokenizer_path, shape):
    pipe = build_random_pipeline(tokenizer_path, shape)
    enc = TextEncoder(pipe.tokenizer, pipe.text_encoder)
    first = enc.full("nudity")
    assert first.shape == (77, pipe.text_encoder.config.hidden_size) and first.dtype == torch.float64
    assert enc.full("nudity") is first  # encoded once
    with pytest.raises(RECEError, match="tokens long"):
        enc.check("word " * 100, "concept")


@pytest.mark.parametrize(("shape", "width"), [("tiny", 32), ("tiny-sd2", 32)])
def test_find_projections_by_name(tokenizer_path, shape, width):
    unet = build_random_pipeline(tokenizer_path, shape).unet
    projections = find_projections(unet)
    attn2 = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    assert len(projections) == 2 * len(attn2) > 0
    assert {p.kind for p in projections} == {"to_k", "to_v"}
    assert all(p.module.in_features == width == unet.config.cross_attention_dim for p in projections)
    assert all(p.key in unet.state_dict() for p in projections)


def test_sd14_layer_count_from_config():
    unet = UNet2DConditionModel.from_config({
        "block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 64, "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "attention_head_dim": 2, "norm_num_groups": 8,
    })
    assert len(find_projections(unet)) == 32  # 16 cross-attention layers as in SD 1.x/2.x


def test_unet_without_cross_attention_is_rejected():
    unet = UNet2DModel(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(RECEError, match="no cross-attention"):
        find_projections(unet)


def test_snapshot_restore_and_kv_checks(tokenizer_path):
    unet = build_random_pipeline(tokenizer_path, "tiny").unet
    projections = find_projections(unet)
    saved = read_weights(projections)
    with torch.no_grad():
        for p in projections:
            p.module.weight.mul_(2)
    write_weights(projections, saved)
    assert all(torch.equal(p.module.weight, saved[p.key]) for p in projections)
    full = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    assert set(check_kv_weights(projections, full, "f")) == set(saved)
    bad = dict(saved)
    bad[projections[0].key] = torch.zeros(3, 3)
    with pytest.raises(RECEError, match="shape mismatches"):
        check_kv_weights(projections, bad, "f")
    with pytest.raises(RECEError, match="missing keys"):
        check_kv_weights(projections, {}, "f")
    nan = dict(saved)
    nan[projections[0].key] = torch.full_like(saved[projections[0].key], float("nan"))
    with pytest.raises(RECEError, match="non-finite"):
        check_kv_weights(projections, nan, "f")
