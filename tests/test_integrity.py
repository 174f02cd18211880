"""Checkpoints and exports carry a hash of their tensors and a fingerprint of the base model; loading checks both."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from rece_lightning.artefacts.export import (
    EDIT_MAP,
    KV_WEIGHTS,
    apply_edit_map,
    export_edit,
    load_kv_into,
    read_metadata,
)
from rece_lightning.artefacts.integrity import base_fingerprint, check_base
from rece_lightning.errors import RECEError
from rece_lightning.files import tensor_sha256
from rece_lightning.lightning.module import RECEModule
from rece_lightning.models.random_pipeline import build_random_pipeline


@pytest.fixture(scope="module")
def other_base(tokenizer_path, tmp_path_factory):
    """A pipeline with the tiny SD1 shapes but other random weights (another base model)."""
    path = tmp_path_factory.mktemp("other") / "tiny"
    build_random_pipeline(tokenizer_path, "tiny", seed=1).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def checkpoint(tiny_sd1, tmp_path_factory):
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False,
                        rece={"iterations": 1})
    module.erase()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "edit.ckpt"
    trainer.save_checkpoint(path)
    return path


def _restore(model: str, path, dtype: str = "float32") -> RECEModule:
    module = RECEModule(pretrained=model, concepts=["nudity"], validate_original=False, rece={"iterations": 1},
                        torch_dtype=dtype)
    module.on_load_checkpoint(torch.load(path, weights_only=True))
    return module


def test_hash_and_fingerprint_oracles():
    a = {"w": torch.arange(6.0).reshape(2, 3)}
    assert tensor_sha256(a) == tensor_sha256({"w": a["w"].clone()})
    assert tensor_sha256(a) != tensor_sha256({"w": a["w"] + 1e-6})
    assert tensor_sha256(a) != tensor_sha256({"w": a["w"].double()})  # dtype, shape and name are hashed
    assert tensor_sha256(a) != tensor_sha256({"w": a["w"].reshape(3, 2)})
    assert tensor_sha256(a) != tensor_sha256({"v": a["w"]})
    assert tensor_sha256(a, "settings") != tensor_sha256(a)  # the header binds other inputs
    oracle = hashlib.sha256(b"w|torch.float32|(2, 3)|" + a["w"].numpy().tobytes()).hexdigest()
    assert tensor_sha256(a) == oracle  # the hash saved in existing checkpoints and exports stays valid
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    saved = base_fingerprint({"w": w})
    for dtype in (torch.float16, torch.bfloat16):  # the same base model read in another dtype matches
        check_base(saved, {"w": w.to(dtype)}, "f")
    with pytest.raises(RECEError, match="another base model"):
        check_base(saved, {"w": torch.randn(64, 32, generator=torch.Generator().manual_seed(1))}, "f")


def test_checkpoint_restores_in_other_dtypes(checkpoint, tiny_sd1):
    for dtype in ("float32", "bfloat16"):
        module = _restore(str(tiny_sd1), checkpoint, dtype)
        assert module.stage == "rece-1"


def test_altered_checkpoint_is_refused(checkpoint, tiny_sd1, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    key = next(k for k in state["rece"]["state"] if k.startswith("steps.") and k.endswith(".y"))
    state["rece"]["state"][key][0, 0] += 0.01  # finite, plausible, wrong
    torch.save(state, tmp_path / "altered.ckpt")
    with pytest.raises(RECEError, match="altered after it was written"):
        _restore(str(tiny_sd1), tmp_path / "altered.ckpt")


def test_checkpoint_on_another_base_model_is_refused(checkpoint, other_base):
    with pytest.raises(RECEError, match="made on another base model"):
        _restore(str(other_base), checkpoint)


@pytest.fixture(scope="module")
def exported(tiny_sd1, tmp_path_factory):
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False,
                        rece={"iterations": 1})
    out = tmp_path_factory.mktemp("export")
    export_edit(module.erase(), out, ["kv_weights", "edit_map"])
    return out


def test_exports_carry_their_hash(exported):
    for name in (KV_WEIGHTS, EDIT_MAP):
        info = read_metadata(exported / name)
        assert info["sha256"] == tensor_sha256(load_file(exported / name))
        assert info["base_fingerprint"]


def test_altered_export_is_refused(exported, tiny_sd1, tmp_path):
    for name in (KV_WEIGHTS, EDIT_MAP):
        tensors = load_file(exported / name)
        key = next(iter(tensors))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] += 0.01
        save_file(tensors, str(tmp_path / name), metadata={"format": "pt", "rece_lightning": (
            __import__("json").dumps(read_metadata(exported / name)))})
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    with pytest.raises(RECEError, match="altered after it was written"):
        load_kv_into(unet, tmp_path / KV_WEIGHTS)
    with pytest.raises(RECEError, match="altered after it was written"):
        apply_edit_map(unet, tmp_path / EDIT_MAP)


def test_export_on_another_base_model_is_refused(exported, tiny_sd1, other_base):
    other = UNet2DConditionModel.from_pretrained(other_base, subfolder="unet")
    with pytest.raises(RECEError, match="made on another base model"):
        load_kv_into(other, exported / KV_WEIGHTS)
    with pytest.raises(RECEError, match="made on another base model"):
        apply_edit_map(other, exported / EDIT_MAP)
    same = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    load_kv_into(same, exported / KV_WEIGHTS)  # the base it was made on
    assert all(torch.equal(same.state_dict()[k], v) for k, v in load_file(exported / KV_WEIGHTS).items())


def test_rece_refuses_an_altered_checkpoint_before_loading(checkpoint, tiny_sd1, tmp_path, capsys):
    """The real entry point: one line, exit 2, nothing loaded or written."""
    from rece_lightning.lightning.cli import main
    from tests.conftest import REPO

    state = torch.load(checkpoint, weights_only=True)
    state["rece"]["state"]["maps.to_v"][0, 0] += 1e-3
    torch.save(state, tmp_path / "altered.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--model.pretrained", str(tmp_path / "never-loaded"), "--model.concepts", "[nudity]",
              "--data.val_prompts", str(REPO / "tests" / "fixtures" / "prompts" / "nudity.csv"),
              "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(tmp_path / "altered.ckpt")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "altered after it was written" in err
    assert not (tmp_path / "run").exists()
