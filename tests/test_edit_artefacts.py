"""Artefacts sized by the edit: checkpoints hold the edit and the base fingerprint (the K/V are rebuilt exactly on
load, both for the shared map and the per-layer "tensor" path), the LoRA carries the edit's rank or a recorded cut,
and the edit map stores a shared map once."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rece_lightning.artefacts.export import apply_edit_map, read_metadata, save_edit_map, save_lora
from rece_lightning.errors import RECEError
from rece_lightning.files import tensor_sha256
from rece_lightning.lightning.checkpoint import _edit_tensors
from rece_lightning.lightning.module import RECEModule


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


def test_flux_checkpoint_rebuilds_every_input_space(tiny_flux, tmp_path):
    """Flux edits two input spaces (tokens: ``context_embedder``; pooled: ``time_text_embed.text_embedder.linear_1``):
    its checkpoints hold both spaces' edit (``space.pooled.`` keys) and no weight, and loading one or resuming from
    one rebuilds both layers bit for bit."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rece_lightning.lightning.data import RECEDataModule
    from tests.conftest import SEQ

    settings = dict(pretrained=str(tiny_flux), concepts=["nudity"], validate_original=False, rece={"iterations": 1},
                    max_sequence_length=SEQ)
    module = RECEModule(**settings)
    original = _weights(module)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="stage-{epoch}")
    trainer = L.Trainer(max_epochs=len(module.stages), callbacks=[checkpoints], logger=False,
                        enable_progress_bar=False)
    trainer.fit(module, datamodule=RECEDataModule())
    edited = _weights(module)
    assert module.stage == "rece-1" and set(module.editor.spaces) == {"tokens", "pooled"}
    assert all(not torch.equal(edited[k], original[k]) for k in original), "both input spaces are edited"

    last = torch.load(tmp_path / "stage-epoch=1.ckpt", weights_only=True)
    assert last["state_dict"] == {}
    assert any(k.startswith("space.pooled.") for k in last["rece"]["state"])
    loaded = RECEModule.load_from_checkpoint(tmp_path / "stage-epoch=1.ckpt")
    assert loaded.stage == "rece-1"
    assert all(torch.equal(w, edited[k]) for k, w in _weights(loaded).items()), "loading rebuilds both spaces"
    # a pooled map of the wrong width (hash made to match) is refused in one line, naming the space
    pooled = [k for k in last["rece"]["state"] if k.startswith("space.pooled.maps.")]
    assert pooled
    for key in pooled:
        last["rece"]["state"][key] = torch.eye(3, dtype=torch.float64)
    last["rece"]["sha256"] = tensor_sha256(_edit_tensors(last["rece"]))
    with pytest.raises(RECEError, match="width of input space 'pooled'"):
        RECEModule(**settings).on_load_checkpoint(last)

    resumed = RECEModule(**settings)
    L.Trainer(max_epochs=len(resumed.stages), logger=False, enable_checkpointing=False,
              enable_progress_bar=False).fit(resumed, datamodule=RECEDataModule(),
                                             ckpt_path=tmp_path / "stage-epoch=0.ckpt")
    assert resumed.stage == "rece-1"
    assert all(torch.equal(w, edited[k]) for k, w in _weights(resumed).items()), "resuming rebuilds both spaces"


def test_spaced_edit_map_stores_each_shared_map_once_and_lora_spans_every_space(tmp_path):
    """With keys and values sharing a map in two input spaces, the map file holds ``T`` and ``pooled.T`` (metadata
    names the kinds) and reads back as every space's kinds; the LoRA (rank cap included) covers every space's layers."""
    from torch import nn

    from rece_lightning.artefacts.export import load_edit_map
    from rece_lightning.maths.projections import Projection
    from rece_lightning.maths.spaces import SpacedEditor

    gen = torch.Generator().manual_seed(0)
    widths = {"tokens": 6, "pooled": 4}
    layers = []
    for space, d in widths.items():
        for kind in ("to_k", "to_v"):
            linear = nn.Linear(d, 5, bias=False).double()
            with torch.no_grad():
                linear.weight.copy_(torch.randn(5, d, generator=gen, dtype=torch.float64))
            layers.append(Projection(f"{space}_{kind}", kind, linear, "transformer", space))
    editor = SpacedEditor(layers)
    for space, d in widths.items():
        rows = [torch.randn(3, d, generator=gen, dtype=torch.float64) for _ in range(3)]
        editor.erase([(rows[0], rows[1])], rows[2], space=space, lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
    path = save_edit_map(editor, tmp_path / "map.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == ["T", "pooled.T"]
    maps, info = load_edit_map(path)
    assert set(maps) == {"to_k", "to_v", "pooled.to_k", "pooled.to_v"}
    assert info["shared"] == ["to_k", "to_v"] and info["spaces"]["pooled"]["shared"] == ["to_k", "to_v"]
    for space in widths:
        prefix = "" if space == "tokens" else f"{space}."
        for kind in ("to_k", "to_v"):
            assert torch.equal(maps[f"{prefix}{kind}"], editor.space(space).maps[kind])

    info = read_metadata(save_lora(editor, tmp_path / "lora.safetensors", max_rank=1))["lora"]
    assert info["rank"] == 1 and info["edit_rank"] > 1 and 0 < info["relative_error"] < 1
    with safe_open(str(tmp_path / "lora.safetensors"), "pt") as handle:
        assert {k.split(".")[1] for k in handle.keys()} == {p.key.removesuffix(".weight") for p in layers}  # noqa: SIM118
