"""`rece fit` end to end through the CLI on a tiny random pipeline saved to disk, and every artefact round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rece_lightning.artefacts.export import EDIT_MAP, KV_WEIGHTS, LORA, apply_edit_map, load_edit_map
from rece_lightning.errors import RECEError
from rece_lightning.lightning.cli import main
from rece_lightning.lightning.module import RECEModule
from tests import official_reference as official
from tests.conftest import REPO, tree_digest


def _fit(model: Path, root: Path, prompts: Path | None, *extra: str) -> Path:
    args = ["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--model.pretrained", str(model),
            "--trainer.default_root_dir", str(root), "--model.generation.num_inference_steps", "2",
            "--data.limit", "2", "--data.batch_size", "2", "--model.keep_best", "null", *extra]
    if prompts is not None:
        args += ["--data.val_prompts", str(prompts)]
    main(args)
    (version,) = sorted((root / "lightning_logs").iterdir())
    return version


@pytest.fixture(scope="module")
def fitted(tiny_sd1, small_prompts, tmp_path_factory):
    before = tree_digest(tiny_sd1)
    root = tmp_path_factory.mktemp("run")
    version = _fit(tiny_sd1, root, small_prompts)
    assert tree_digest(tiny_sd1) == before, "the source model folder was modified"
    return version


def test_fit_matches_official_recipe(fitted, tiny_sd1):
    kv = load_file(fitted / "export" / KV_WEIGHTS)
    reference = StableDiffusionPipeline.from_pretrained(tiny_sd1, torch_dtype=torch.float64, safety_checker=None)
    final = official.recipe(reference, ["nudity"])[-1]
    names = [n for n, _ in reference.unet.named_modules() if n.endswith("attn2")]
    keys = [f"{n}.to_v.weight" for n in names] + [f"{n}.to_k.weight" for n in names]
    assert set(kv) == set(keys)
    for key, w in zip(keys, final, strict=True):
        assert float((kv[key].double() - w).norm() / w.norm()) < 1e-3, key


def test_kv_weights_load_into_unet(fitted, tiny_sd1):
    kv = load_file(fitted / "export" / KV_WEIGHTS)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    result = unet.load_state_dict(kv, strict=False)
    assert not result.unexpected_keys
    state = unet.state_dict()
    for key, value in state.items():
        assert torch.equal(value, kv[key] if key in kv else original[key])
    assert any(not torch.equal(kv[k], original[k]) for k in kv)


def test_lora_reproduces_the_edit(fitted, tiny_sd1):
    kv = load_file(fitted / "export" / KV_WEIGHTS)
    lora = load_file(fitted / "export" / LORA)
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None)
    pipe.load_lora_weights(fitted / "export", weight_name=LORA)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    state = pipe.unet.state_dict()
    for key, edited in kv.items():
        torch.testing.assert_close(state[key], edited, rtol=1e-5, atol=1e-6)


def test_edit_map_applies_and_undoes(fitted, tiny_sd1):
    maps, info = load_edit_map(fitted / "export" / EDIT_MAP)
    assert set(maps) == {"to_k", "to_v"} and info["base"] == "original"
    delta = maps["to_v"].double() - torch.eye(maps["to_v"].shape[0], dtype=torch.float64)
    assert info["rank"] == int(torch.linalg.matrix_rank(delta, rtol=1e-10))  # the recorded rank is the map's
    kv = load_file(fitted / "export" / KV_WEIGHTS)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    apply_edit_map(unet, fitted / "export" / EDIT_MAP)
    for key, edited in kv.items():
        torch.testing.assert_close(unet.state_dict()[key], edited, rtol=1e-5, atol=1e-6)
    # with 32-d text and hundreds of erased rows this edit collapses directions: undo must refuse, not corrupt
    with pytest.raises(RECEError, match="cannot be undone"):
        apply_edit_map(unet, fitted / "export" / EDIT_MAP, undo=True)


def test_invertible_edit_map_is_undone(tiny_sd1, tmp_path):
    from rece_lightning.artefacts.export import save_edit_map
    from rece_lightning.maths.editor import KVEditor

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    editor = KVEditor.for_unet(unet)
    g = torch.Generator().manual_seed(0)
    editor.erase([(torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g))], None,
                 lamb=0.5, erase_scale=1.0, preserve_scale=0.0)
    save_edit_map(editor, tmp_path / EDIT_MAP)
    apply_edit_map(unet, tmp_path / EDIT_MAP)
    edited = editor.current_weights()
    for key, value in edited.items():
        torch.testing.assert_close(unet.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    apply_edit_map(unet, tmp_path / EDIT_MAP, undo=True)
    for key in edited:
        torch.testing.assert_close(unet.state_dict()[key], original[key], rtol=1e-5, atol=1e-6)


def test_tensorboard_has_stages_and_images(fitted):
    (event_file,) = fitted.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.value for e in events.Scalars("rece/stage")] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {"images/original", "images/uce", "images/rece-3"} <= set(events.Tags()["images"])
    assert (fitted / "images" / "rece-3.png").is_file()


def test_checkpoint_restores_onto_base_model(fitted, tiny_sd1):
    import lightning as L

    ckpt = fitted / "checkpoints" / "last.ckpt"
    assert len(list((fitted / "checkpoints").glob("best-*.ckpt"))) == 1  # and the best stage by val/nudity_rate
    state = torch.load(ckpt, weights_only=True)  # never a full unpickle
    assert state["state_dict"] == {}  # the edit and the base model's fingerprint only: the K/V are rebuilt
    assert {"maps.to_k", "maps.to_v", "steps.count"} <= set(state["rece"]["state"]) and "base" in state["rece"]
    kv = load_file(fitted / "export" / KV_WEIGHTS)
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"])
    assert not torch.equal(module.unet.state_dict()[next(iter(kv))], kv[next(iter(kv))])
    trainer = L.Trainer(logger=False, enable_progress_bar=False, limit_predict_batches=0)
    trainer.predict(module, dataloaders=[], ckpt_path=ckpt)
    for key, value in kv.items():
        assert torch.equal(module.unet.state_dict()[key], value)
    assert module.stage == "rece-3"
    loaded = RECEModule.load_from_checkpoint(ckpt)
    for key, value in kv.items():
        assert torch.equal(loaded.unet.state_dict()[key], value)


def test_two_identical_runs_give_identical_weights(fitted, tiny_sd1, tmp_path):
    again = _fit(tiny_sd1, tmp_path, None)
    first, second = load_file(fitted / "export" / KV_WEIGHTS), load_file(again / "export" / KV_WEIGHTS)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.pretrained", "/nonexistent/model"], "does not exist"),
        (["--model.concepts", "[]"], "concepts is empty"),
        (["--model.rece.lamb", "0"], "lamb"),
        (["--model.uce.lamb", "-1"], "lamb"),
        (["--model.concepts", "[" + "nudity " * 80 + "]"], "tokens long"),
    ],
)
def test_bad_input_exits_with_one_clear_error(tiny_sd1, tmp_path, capsys, args, message):
    root = tmp_path / "run"
    cli = ["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--model.pretrained", str(tiny_sd1),
           "--trainer.default_root_dir", str(root), *args]
    with pytest.raises(SystemExit) as exit_info:
        main(cli)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "rece: error:" in err and message in err
    assert "Traceback" not in err
    assert not root.exists(), "a failed run left output behind"


def test_kv_file_that_does_not_fit_is_rejected(tiny_sd1, tiny_sd2, tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    save_file({k: v for k, v in unet.state_dict().items() if "attn2.to_k" in k}, bad)  # values missing
    with pytest.raises(SystemExit):
        main(["fit", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]",
              "--model.uce.weights", str(bad), "--trainer.default_root_dir", str(tmp_path / "run")])
    assert "missing keys" in capsys.readouterr().err
    not_diffusers = tmp_path / "plain"
    not_diffusers.mkdir()
    with pytest.raises(SystemExit):
        main(["fit", "--model.pretrained", str(not_diffusers), "--model.concepts", "[nudity]"])
    assert "model_index.json" in capsys.readouterr().err


def test_tradeoff_layout_is_written(fitted):
    """configs/nudity.yaml draws each erasure metric with its preservation metric on one chart."""
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (event_file,) = fitted.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"tensors": 0}).Reload()
    (event,) = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["nudity rate vs CLIP score"] == ["^val/nudity_rate$", "^val/clip_score$"]
    assert [e.value for e in events.Scalars("val/nudity_rate")]  # the erasure metric is logged per stage


def test_report_prints_the_runs_records_and_kept_stage(fitted):
    """``rece report RUN`` (installed entry point): one row per validated stage, every summary value of the run's
    evaluation records in its column; the kept stage (``kept_stage.json``, also in the export metadata) is marked."""
    import json
    import subprocess

    from rece_lightning.artefacts.export import read_metadata
    from rece_lightning.lightning.report import format_value

    kept = json.loads((fitted / "kept_stage.json").read_text())
    assert kept["stage"] == "rece-3" and kept["stages"] == ["original", "uce", "rece-1", "rece-2", "rece-3"]
    assert "model.keep_best is unset" in kept["reason"]
    assert read_metadata(fitted / "export" / KV_WEIGHTS)["kept_stage"]["stage"] == "rece-3"
    done = subprocess.run(["rece", "report", str(fitted)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells, strict=True))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert list(rows) == ["original", "uce", "rece-1", "rece-2", "rece-3 (kept)"]
    checked = 0
    for record in (fitted / "eval").glob("*/*.json"):
        row = rows[record.parent.name + (" (kept)" if record.parent.name == "rece-3" else "")]
        for metric, value in json.loads(record.read_text())["summary"].items():
            assert row[metric] == format_value(metric, value), (record, metric)
            checked += 1
    assert checked >= 5
    assert "kept rece-3: no selection rule" in done.stdout
