"""The package reproduces the official RECE procedure (re-stated layer by layer in official_reference.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from rece_lightning.lightning.module import RECEModule
from rece_lightning.maths.edit_state import EditState
from tests import official_reference as official


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def reference_pipe(tiny_sd1):
    return StableDiffusionPipeline.from_pretrained(tiny_sd1, torch_dtype=torch.float64, safety_checker=None)


def test_sd2_shaped_pipeline_matches_official(tiny_sd2):
    """SD 2.x conventions (tokenizer pads with "!") go through the same path."""
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd2, torch_dtype=torch.float64, safety_checker=None)
    assert reference.tokenizer.pad_token == "!"
    module = RECEModule(pretrained=str(tiny_sd2), concepts=["nudity"], validate_original=False, torch_dtype="float64")
    final = official.recipe(reference, ["nudity"])[-1]
    ours = module.erase().current_weights(torch.float64)
    keys = [k for k in (f"{n}.to_{x}.weight" for x in "vk" for n, _ in module.unet.named_modules()
                        if n.endswith("attn2"))]
    assert max(_relative(ours[k], w) for k, w in zip(keys, final, strict=True)) < 1e-8


@pytest.mark.parametrize(
    ("concepts", "technique", "with_to_k"),
    [(["nudity"], "replace", True), (["hate", "bodily fluids"], "replace", True),
     (["nudity"], "tensor", True), (["nudity"], "replace", False)],
)
def test_every_stage_matches_official(tiny_sd1, reference_pipe, concepts, technique, with_to_k):
    module = RECEModule(
        pretrained=str(tiny_sd1), concepts=concepts, technique=technique, with_to_k=with_to_k,
        validate_original=False, torch_dtype="float64",
        uce={"lamb": 0.5, "erase_scale": 1.0, "preserve_scale": None, "preserve": [""]},
        rece={"iterations": 3, "gamma": 0.1, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1},
    )
    expected = official.recipe(reference_pipe, concepts, technique=technique, with_to_k=with_to_k)
    names = [n for n, _ in module.unet.named_modules() if n.endswith("attn2")]
    keys = [f"{n}.to_v.weight" for n in names] + [f"{n}.to_k.weight" for n in names]
    worst = 0.0
    for index, stage_weights in enumerate(expected):
        module.run_stage(index)
        ours = module.editor.current_weights(torch.float64)
        for key, w in zip(keys, stage_weights, strict=True):
            worst = max(worst, _relative(ours[key], w))
            assert torch.equal(module.unet.get_parameter(key).double(), ours[key])  # folded into the UNet
    assert worst < 1e-8, worst  # float64 against float64: far inside the 1e-3
    original = official.projections(reference_pipe.unet)
    if not with_to_k:
        for p, key in zip(original[len(names):], keys[len(names):], strict=True):
            assert torch.equal(module.editor.current_weights(torch.float64)[key], p.weight.double())


def test_shared_map_and_per_layer_paths_agree(tiny_sd1):
    """The fast path (one map T) equals the general per-layer path on "replace" edits."""
    kwargs = dict(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False, torch_dtype="float64")
    fast = RECEModule(**kwargs).erase()
    module = RECEModule(**kwargs)
    slow = module.editor  # the general path with replace values: per-layer weights in the state
    slow.restore_snapshot(EditState(maps=slow.maps, layer_weights={k: v.double() for k, v in slow.base.items()}))
    module.erase()
    for key, w in fast.current_weights(torch.float64).items():
        assert _relative(w, slow.current_weights(torch.float64)[key]) < 1e-9
