"""Artefacts sized by the edit: checkpoints hold the edit and the base fingerprint (the K/V are rebuilt exactly on
load, both for the shared map and the per-layer "tensor" path), the LoRA carries the edit's rank or a recorded cut,
and the edit map stores a shared map once."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rece_lightning.export import apply_edit_map, read_metadata, save_edit_map, save_lora
from rece_lightning.module import RECEModule


def _weights(module: RECEModule) -> dict[str, torch.Tensor]:
    return {p.key: p.module.weight.detach().clone() for p in module.editor.projections}


@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_checkpoint_holds_the_edit_and_rebuilds_the_kv_exactly(tiny_sd1, technique):
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], technique=technique, validate_original=False,
                        rece={"iterations": 2})
    module.erase()
    edited = _weights(module)
    checkpoint = {"state_dict": module.state_dict(), "runsafe": {"kept": True}}  # another helper's key survives
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] == {} and checkpoint["runsafe"] == {"kept": True}
    saved = checkpoint["rece"]["state"]
    assert any(k.startswith("layers.") for k in saved) is (technique == "tensor")  # the general path keeps layers
    fresh = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], technique=technique, validate_original=False,
                       rece={"iterations": 2})
    assert not all(torch.equal(w, edited[k]) for k, w in _weights(fresh).items())
    fresh.on_load_checkpoint(checkpoint)
    rebuilt = _weights(fresh)
    assert rebuilt.keys() == edited.keys()
    assert all(torch.equal(rebuilt[k], edited[k]) for k in edited), "resuming must rebuild the K/V bit for bit"
    assert fresh.stage == module.stage


def test_lora_carries_the_edit_rank_or_a_recorded_cut(tiny_sd1, tmp_path):
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False,
                        rece={"iterations": 1})
    editor = module.erase()
    rank = editor.edit_rank()
    assert rank > 2
    exact = read_metadata(save_lora(editor, tmp_path / "exact.safetensors"))["lora"]
    assert exact["exact"] and exact["rank"] == exact["edit_rank"] == rank and exact["relative_error"] == 0.0
    path = save_lora(editor, tmp_path / "cut.safetensors", max_rank=2)
    info = read_metadata(path)["lora"]
    assert not info["exact"] and info["rank"] == 2 and info["max_rank"] == 2 and info["edit_rank"] == rank
    # the recorded error, checked against the factors actually written (float32) and the edited weights (float64)
    current = editor.current_weights(torch.float64)
    left = total = 0.0
    worst = 0.0
    with safe_open(str(path), "pt") as handle:
        for p in editor.projections:
            module_key = f"{p.owner}.{p.key.removesuffix('.weight')}"
            a = handle.get_tensor(f"{module_key}.lora_A.weight").double()
            b = handle.get_tensor(f"{module_key}.lora_B.weight").double()
            assert a.shape[0] == b.shape[1] == 2
            delta = current[p.key] - editor.original[p.key].double()
            err = float((delta - b @ a).square().sum())
            left, total = left + err, total + float(delta.square().sum())
            worst = max(worst, (err / float(delta.square().sum())) ** 0.5)
    assert 0 < info["relative_error"] < 1
    assert info["relative_error"] == pytest.approx((left / total) ** 0.5, rel=1e-4)
    assert info["max_layer_relative_error"] == pytest.approx(worst, rel=1e-4)


def test_shared_edit_map_is_stored_once_and_applies(tiny_sd1, tmp_path):
    from diffusers import UNet2DConditionModel

    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False,
                        rece={"iterations": 1})
    editor = module.erase()
    path = save_edit_map(editor, tmp_path / "map.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert list(handle.keys()) == ["T"]  # noqa: SIM118 (safe_open is not a dict)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    apply_edit_map(unet, path)
    state = unet.state_dict()
    for key, value in editor.current_weights().items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
