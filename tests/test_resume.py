"""A real ``rece fit`` interrupted by Ctrl-C (SIGINT) between two stages, resumed with the command it printed, gives
the exports of an uninterrupted run, in a new run folder of its own (the interrupted run's folder is left as it was),
with the FD reference of the original stage."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from rece_lightning.artefacts.export import EDIT_MAP, KV_WEIGHTS, LORA
from tests.conftest import REPO, tree_digest
from tests.interrupt import ENV, default_sigint

SHORT = ["--data.limit", "4", "--model.generation.num_inference_steps", "2", "--model.rece.iterations", "1"]


def _rece(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m rece_lightning.lightning.cli`` in a subprocess (a SIGINT must not reach the test runner)."""
    environment = {k: v for k, v in os.environ.items() if k != ENV}
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "rece_lightning.lightning.cli", *args], cwd=REPO, env=environment,
                          preexec_fn=default_sigint, capture_output=True, text=True, timeout=900)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)


def _compare_exports(a: Path, b: Path, exact: bool) -> None:
    """The exports of two runs: the K/V weights bit for bit; the edit map and the LoRA (as the products ``B A``)
    bit for bit when ``exact``, else to float64 round-off (``1e-12``) and float32 round-off (``1e-6``)."""
    first, second = _tensors(a / "export" / KV_WEIGHTS), _tensors(b / "export" / KV_WEIGHTS)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    first, second = _tensors(a / "export" / EDIT_MAP), _tensors(b / "export" / EDIT_MAP)
    assert first.keys() == second.keys()
    for key in first:
        if exact:
            assert torch.equal(first[key], second[key]), key
        else:
            torch.testing.assert_close(second[key], first[key], rtol=1e-12, atol=1e-12)
    first, second = _tensors(a / "export" / LORA), _tensors(b / "export" / LORA)
    assert first.keys() == second.keys()
    for key in (k for k in first if k.endswith("lora_A.weight")):
        up = key.replace("lora_A", "lora_B")
        if exact:
            assert torch.equal(first[key], second[key]) and torch.equal(first[up], second[up]), key
        else:
            torch.testing.assert_close(second[up].double() @ second[key].double(),
                                       first[up].double() @ first[key].double(), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def sigint_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config that adds the SIGINT helper (inactive unless RECE_TEST_SIGINT_AT_EPOCH is set)."""
    path = tmp_path_factory.mktemp("configs") / "sigint.yaml"
    path.write_text("trainer:\n  callbacks+:\n    - class_path: tests.interrupt.SigintAtEpoch\n")
    return path


@pytest.fixture(scope="module")
def testbed_runs(tmp_path_factory: pytest.TempPathFactory, sigint_config: Path) -> dict[str, Any]:
    """The testbed job (original, uce, rece-1; FD to the original stage's images) run whole, and run again with a
    SIGINT after ``uce`` followed by exactly the resume command it printed."""
    tmp = tmp_path_factory.mktemp("resume")
    common = ["fit", "--config", str(REPO / "configs" / "testbed.yaml"), "--config", str(sigint_config), *SHORT,
              "--model.keep_best", "null"]
    whole = _rece([*common, "--trainer.default_root_dir", str(tmp / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    root = tmp / "interrupted"
    first = _rece([*common, "--trainer.default_root_dir", str(root)], env={ENV: "2"})
    assert first.returncode == 130, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if line.startswith("rece:")]
    prefix = "; to resume: "
    assert len(lines) == 1 and prefix in lines[0], first.stderr[-3000:]
    command = shlex.split(lines[0].split(prefix, 1)[1])
    interrupted_exports = (root / "lightning_logs" / "version_0" / "export").exists()
    before = tree_digest(root / "lightning_logs" / "version_0")
    resumed = _rece(command[1:])  # exactly the printed command (without the SIGINT variable)
    untouched = tree_digest(root / "lightning_logs" / "version_0") == before
    return {"root": root, "reference": tmp / "whole" / "lightning_logs" / "version_0", "first": first,
            "lines": lines, "command": command, "resumed": resumed, "interrupted_exports": interrupted_exports,
            "untouched": untouched}


def test_interrupted_fit_resumes_to_the_same_exports(testbed_runs):
    root, first, resumed = testbed_runs["root"], testbed_runs["first"], testbed_runs["resumed"]
    interrupted_run = root / "lightning_logs" / "version_0"
    run = root / "lightning_logs" / "version_1"
    assert "rece: stage 2/3 uce done in" in first.stdout and "rece-1 done" not in first.stdout
    assert not testbed_runs["interrupted_exports"]
    (interrupted,) = testbed_runs["lines"]
    assert interrupted.startswith(f"rece: interrupted after 2 of 3 stages (original, uce), kept in "
                                  f"{interrupted_run / 'checkpoints'}; to resume: rece fit ")
    command = testbed_runs["command"]
    ckpt = interrupted_run / "checkpoints" / "stage-epoch=1.ckpt"
    assert command[0] == "rece" and command[-2:] == ["--ckpt_path", str(ckpt)]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"rece: fit resumes {interrupted_run} after 2 stages (original, uce) from stage-epoch=1.ckpt, writing to "
            f"{run}") in resumed.stdout
    assert "rece: stage 3/3 rece-1 done in" in resumed.stdout and "original done" not in resumed.stdout
    assert sorted(p.name for p in (root / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    assert testbed_runs["untouched"], "the resumed run wrote into the interrupted run's folder"
    assert json.loads((run / "resumed_from.json").read_text())["stages"] == ["original", "uce"]
    assert sorted(p.name for p in (run / "checkpoints").glob("stage-*.ckpt")) == ["stage-epoch=2.ckpt"]
    _compare_exports(testbed_runs["reference"], run, exact=False)
    # the Fréchet distance of the resumed stage still compares with the original stage's images
    fd = "fd_testbed_classifier.json"
    summary = json.loads((run / "eval" / "rece-1" / fd).read_text())["summary"]
    reference = json.loads((testbed_runs["reference"] / "eval" / "rece-1" / fd).read_text())["summary"]
    assert summary and summary == reference


def test_resumed_exports_are_bit_identical(testbed_runs):
    assert testbed_runs["resumed"].returncode == 0
    _compare_exports(testbed_runs["reference"], testbed_runs["root"] / "lightning_logs" / "version_1", exact=True)


def test_resumed_fit_keeps_the_same_best_stage(tiny_sd1, small_prompts, tmp_path, sigint_config):
    """With ``keep_best`` the stage kept after a resume must be the one an uninterrupted run keeps: the best stage
    seen before the interruption has to survive in the checkpoint."""
    common = ["fit", "--config", str(REPO / "configs" / "nudity.yaml"), "--config", str(sigint_config),
              "--model.pretrained", str(tiny_sd1), "--data.val_prompts", str(small_prompts), "--data.limit", "2",
              "--model.generation.num_inference_steps", "1", "--model.rece.iterations", "2"]
    whole = _rece([*common, "--trainer.default_root_dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = _rece([*common, "--trainer.default_root_dir", str(tmp_path / "cut")], env={ENV: "3"})
    assert first.returncode == 130, first.stderr[-3000:]
    command = shlex.split(first.stderr.split("; to resume: ")[1].splitlines()[0])
    resumed = _rece(command[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (kept,) = [line for line in (resumed.stdout + resumed.stderr).splitlines() if line.startswith("rece: kept stage")]
    (expected,) = [line for line in (whole.stdout + whole.stderr).splitlines() if line.startswith("rece: kept stage")]
    assert kept == f"{expected}, chosen over all 4 stages, the 3 before the resume included"
    _compare_exports(tmp_path / "whole" / "lightning_logs" / "version_0", tmp_path / "cut" / "lightning_logs" / "version_1",
                     exact=False)
