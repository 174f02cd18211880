"""Issue 18 §1: no run is ever overwritten or mislabelled.

A checkpoint records the identity of its run (:mod:`rece_lightning.lightning.run_identity`); ``--ckpt_path`` of another run is
refused before anything is loaded; a resumed run writes a new version folder of its own; version folders are created
exclusively; SIGTERM keeps the completed stages. All through the installed ``rece`` executable (erase-only testbed
runs: seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from rece_lightning.lightning.run_identity import IDENTITY_KEY
from tests.conftest import REPO, tree_digest
from tests.interrupt import TERM_ENV
from tests.test_bad_input import assert_one_error

RECE = Path(sys.executable).with_name("rece")
CALLBACKS = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_top_k: -1, filename: "stage-{epoch}"}
    - class_path: rece_lightning.lightning.callbacks.ExportEdit
    - class_path: tests.interrupt.SigtermAtEpoch
"""


def _rece(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if k != TERM_ENV}
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    done = subprocess.run([str(RECE), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=environment)
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "stages.yaml"
    path.write_text(CALLBACKS, encoding="utf-8")
    return path


def _args(config: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(config), "--model.concepts", "[triangle]", "--model.rece.iterations", "1",
            "--model.validate_original", "false", "--trainer.default_root_dir", str(root), *extra]


@pytest.fixture(scope="module")
def finished(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished erase-only testbed run (stages uce, rece-1), its checkpoints and exports."""
    root = tmp_path_factory.mktemp("run-a")
    result = _rece(_args(config, root))
    assert result["code"] == 0, result["stderr"][-3000:]
    run = root / "lightning_logs" / "version_0"
    assert (run / "export" / "kv_weights.safetensors").is_file()
    return run


def test_checkpoints_record_the_run_identity(finished):
    record = torch.load(finished / "checkpoints" / "stage-epoch=0.ckpt", weights_only=True)[IDENTITY_KEY]
    identity = record["identity"]
    assert record["stages"] == ["uce"]
    assert identity["model.concepts"] == ["triangle"] and identity["model.pretrained"] == "testbed"
    assert identity["model.uce.lamb"] == 0.5 and "model.rece.iterations" not in identity
    assert len(identity["model.base_fingerprint.sha256"]) == 64


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--model.concepts", "[circle]"], ["model.concepts is ['triangle'] there, ['circle'] here"]),
        (["--model.uce.lamb", "0.3"], ["model.uce.lamb is 0.5 there, 0.3 here"]),
        (["--model.generation.num_inference_steps", "3"], ["model.generation.num_inference_steps is 50 there"]),
    ],
)
def test_resuming_another_run_is_refused(finished, config, tmp_path, extra, needles):
    """The data-loss case of the issue: another run's settings with --ckpt_path of run A and another root."""
    before = tree_digest(finished)
    ckpt = finished / "checkpoints" / "stage-epoch=0.ckpt"
    result = _rece([*_args(config, tmp_path / "b", *extra), "--ckpt_path", str(ckpt)])
    assert_one_error(result, f"--ckpt_path {ckpt} belongs to another run", "leave out --ckpt_path", *needles)
    assert tree_digest(finished) == before
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluating_a_checkpoint_under_other_concepts_is_refused(finished, tmp_path, subcommand):
    ckpt = finished / "checkpoints" / "stage-epoch=1.ckpt"
    option = "--data.val_prompts" if subcommand == "validate" else "--data.test_prompts"
    result = _rece([subcommand, "--model.concepts", "[circle]", option, "testbed:triangle", "--ckpt_path", str(ckpt),
                    "--trainer.default_root_dir", str(tmp_path)])
    assert_one_error(result, "erased ['triangle'], but model.concepts is ['circle'] here")
    assert not (tmp_path / "lightning_logs").exists()


def test_resuming_a_finished_run_writes_a_new_folder(finished, config):
    """Resuming from the first stage of a finished run re-runs rece-1 into version_1; version_0 (its exports
    included) is left exactly as it was."""
    before = tree_digest(finished)
    ckpt = finished / "checkpoints" / "stage-epoch=0.ckpt"
    result = _rece([*_args(config, finished.parent.parent), "--ckpt_path", str(ckpt)])
    assert result["code"] == 0, result["stderr"][-3000:]
    resumed = finished.parent / "version_1"
    assert f"rece: fit resumes {finished} after 1 stages (uce) from stage-epoch=0.ckpt, writing to {resumed}" \
        in result["stdout"]
    assert tree_digest(finished) == before
    assert json.loads((resumed / "resumed_from.json").read_text())["checkpoint"] == str(ckpt)
    assert (resumed / "export" / "kv_weights.safetensors").is_file()
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["stage-epoch=1.ckpt"]


def test_two_fits_started_at_once_get_their_own_folders(config, tmp_path):
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen([str(RECE), *_args(config, tmp_path, "--model.rece.iterations", "0")], cwd=REPO,
                                  env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    folders = sorted(line.split("writes to ")[1] for out, _ in outputs for line in out.splitlines()
                     if line.startswith("rece: fit writes to"))
    assert folders == [str(tmp_path / "lightning_logs" / f"version_{i}") for i in range(2)]
    for folder in folders:
        assert len(list((Path(folder) / "checkpoints").glob("*.ckpt"))) == 1


def test_version_folders_are_created_exclusively(tmp_path):
    """Many threads asking for a folder at once each get a different one (os.mkdir, never exists-then-create)."""
    from itertools import count

    from rece_lightning.lightning.cli import _create_unique

    names: list[str] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        names.append(_create_unique(tmp_path, (f"version_{n}" for n in count())))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(names) == [f"version_{n}" for n in range(8)]


def test_sigterm_keeps_the_completed_stages(config, tmp_path):
    """SIGTERM when rece-1 starts (as a scheduler ending the job): the stage under way finishes, then the run stops,
    keeping the checkpoints of the stages done, with one line naming them and the command that resumes; exit 143."""
    result = _rece(_args(config, tmp_path, "--model.rece.iterations", "2"), env={TERM_ENV: "1"})
    assert result["code"] == 143, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"]
    run = tmp_path / "lightning_logs" / "version_0"
    (line,) = [line for line in result["stderr"].splitlines() if line.startswith("rece:")]
    assert line.startswith(f"rece: terminated after 2 of 3 stages (uce, rece-1), kept in {run / 'checkpoints'}; "
                           "to resume: rece fit ")
    assert line.endswith(f"--ckpt_path {run / 'checkpoints' / 'stage-epoch=1.ckpt'}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["stage-epoch=0.ckpt", "stage-epoch=1.ckpt"]
    assert "rece-2 done" not in result["stdout"] and not (run / "export").exists()


def test_exporting_into_another_runs_export_is_refused(finished, tmp_path):
    """``ExportEdit(dirpath=<run A>/export)`` from run B: one line, exit 2, before the model loads; run A's exports
    are untouched and run B's folder is never made."""
    export = finished / "export"
    before = tree_digest(export)
    config = tmp_path / "export-into-a.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: rece_lightning.lightning.callbacks.ExportEdit\n"
                      f"      init_args: {{dirpath: {export}}}\n", encoding="utf-8")
    root = tmp_path / "run-b"
    result = _rece(["fit", "--config", str(config), "--model.concepts", "[circle]", "--model.rece.iterations", "0",
                    "--model.validate_original", "false", "--trainer.default_root_dir", str(root)])
    assert_one_error(result, f"ExportEdit dirpath {export} already holds files", "give a new folder")
    assert tree_digest(export) == before
    assert not root.exists()
