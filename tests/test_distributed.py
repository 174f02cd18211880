"""Validation that scales: per-row seeds, resumable image store, and real 2-process DDP (gloo) runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rece_lightning.artefacts.export import KV_WEIGHTS
from rece_lightning.artefacts.prompts import read_prompts
from rece_lightning.lightning.data import collate_rows
from rece_lightning.lightning.module import RECEModule

PROMPTS = "prompt,evaluation_seed,case_number\na cat,1,10\na dog,2,11\na bird,3,12\n"


def test_interrupted_evaluation_resumes_without_regenerating(tiny_sd1, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text(PROMPTS)
    batch = collate_rows(read_prompts(csv))
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"],
                        generation={"num_inference_steps": 2, "image_dir": str(tmp_path / "images")})
    module._store = module.image_store()  # what on_validation_epoch_start sets up (no Trainer, no cache here)
    first = module._generate_batch(batch)
    assert first["generated"] == 3
    (folder,) = (tmp_path / "images").iterdir()
    assert folder.name.startswith("original-") and len(list(folder.glob("*.png"))) == 3
    (folder / "000001_11.png").unlink()  # as if the run had stopped before this image
    module._store = module.image_store()  # what on_validation_epoch_start sets up (no Trainer, no cache here)
    second = module._generate_batch(batch)
    assert second["generated"] == 1
    for a, b in zip(first["images"], second["images"], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    module.erase()  # a different model state gets its own folder
    module._store = module.image_store()  # what on_validation_epoch_start sets up (no Trainer, no cache here)
    assert module._generate_batch(batch)["generated"] == 3
    assert len(list((tmp_path / "images").iterdir())) == 2


def _rece(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rece_lightning.lightning.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("devices", [2])
def test_ddp_fit_with_two_cpu_processes(tiny_sd1, tmp_path, devices):
    csv = tmp_path / "p.csv"
    csv.write_text(PROMPTS)
    common = ["fit", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]",
              "--model.generation.num_inference_steps", "1", "--data.val_prompts", str(csv), "--data.batch_size", "1",
              "--trainer.accelerator", "cpu", "--trainer.callbacks+=rece_lightning.lightning.callbacks.ExportEdit"]
    runs = {}
    for n in (1, devices):
        root = tmp_path / f"run{n}"
        result = _rece([*common, "--trainer.devices", str(n), "--trainer.strategy", "ddp" if n > 1 else "auto",
                        "--trainer.default_root_dir", str(root)], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[n] = load_file(root / "lightning_logs" / "version_0" / "export" / KV_WEIGHTS)
    # the same edit up to float32 rounding: each DDP process runs its BLAS with fewer threads, which can change the
    # last bit of a float64 sum and, rarely, of a float32 weight
    assert runs[1].keys() == runs[devices].keys()
    for key in runs[1]:
        torch.testing.assert_close(runs[devices][key], runs[1][key], rtol=1e-6, atol=1e-6)


def test_predict_writes_images_sharded_over_two_processes(tiny_sd1, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text(PROMPTS)
    result = _rece(["predict", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]",
                    "--model.generation.num_inference_steps", "1", "--data.predict_prompts", str(csv),
                    "--data.batch_size", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                    "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path / "run")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "run" / "images").iterdir()
    assert sorted(p.name for p in folder.glob("*.png")) == ["000000_10.png", "000001_11.png", "000002_12.png"]


def test_ddp_validate_gives_the_same_numbers_as_one_process(tiny_sd1, tmp_path):
    """Sharded over 2 gloo processes (5 rows: one shard is padded), the gathered metrics equal the 1-process run."""
    import json

    target = tmp_path / "target.csv"
    target.write_text("prompt,evaluation_seed,case_number,kind,concept,shape,color\n"
                      + "".join(f"a red triangle {i},{i},{i},explicit,triangle,triangle,red\n" for i in range(3)))
    other = tmp_path / "other.csv"
    other.write_text("prompt,evaluation_seed,case_number,kind,concept,shape,color\n"
                     "a blue circle,7,0,unrelated,triangle,circle,blue\na green star,8,1,neighbour,triangle,star,green\n")
    summaries, records = {}, {}
    for n in (1, 2):
        root = tmp_path / f"run{n}"
        result = _rece(["validate", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[triangle]",
                        "--model.generation.num_inference_steps", "1",
                        "--data.val_prompts", f"[{target}, {other}]", "--data.batch_size", "1",
                        "--trainer.accelerator", "cpu", "--trainer.devices", str(n),
                        "--trainer.strategy", "ddp" if n > 1 else "auto", "--trainer.default_root_dir", str(root),
                        "--trainer.callbacks+=rece_lightning.lightning.callbacks.ClassifierAccuracy",
                        "--trainer.callbacks+=rece_lightning.lightning.callbacks.ClassifierAccuracy",
                        "--trainer.callbacks.name=targets_only", "--trainer.callbacks.sources=[target]"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        evaluation = root / "lightning_logs" / "validate-original"  # rece validate names its folder by its model
        document = json.loads((evaluation / "eval/original/classifier.json").read_text())
        only = json.loads((evaluation / "eval/original/targets_only.json").read_text())
        assert document["world_size"] == n and len(document["records"]) == 5
        assert [r["row"] for r in only["records"]] == [0, 1, 2]  # the sources filter kept the first file
        summaries[n] = document["summary"]
        records[n] = [(r["row"], r["predicted"]) for r in document["records"]]
    assert summaries[1] == summaries[2]
    assert records[1] == records[2]
