"""What the ``rece`` command says and writes: stage lines, help, results with full names, run folders named by what
they evaluated, no litter after failures, a quiet start-up and CPU threads."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rece_lightning import quiet
from rece_lightning.lightning.cli import main
from rece_lightning.lightning.cli_text import print_results
from rece_lightning.lightning.strategy import configure_threads
from tests.conftest import REPO
from tests.interrupt import ENV, default_sigint

NUDITY = str(REPO / "configs" / "nudity.yaml")
TESTBED = str(REPO / "configs" / "testbed.yaml")
NOISE = ("requires torchvision", "LOAD REPORT", "Expected types for text_encoder", "💡 Tip", "is deprecated",
         "dirpath has changed", "Be aware that when using", "exists and is not empty", "Traceback")


def _tiny(tiny_sd1: Path, small_prompts: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", NUDITY, "--model.pretrained", str(tiny_sd1), "--data.val_prompts", str(small_prompts),
            "--data.test_prompts", str(small_prompts), "--data.limit", "2", "--model.generation.num_inference_steps",
            "1", "--model.keep_best", "null", "--trainer.default_root_dir", str(root), *extra]


def _rece(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != ENV}
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "rece_lightning.lightning.cli", *args], cwd=REPO, env=environment,
                          preexec_fn=default_sigint, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_run(tiny_sd1, small_prompts, tmp_path_factory) -> tuple[Path, str]:
    """``rece fit`` on the tiny pipeline (original, uce, rece-1) and what it printed."""
    root = tmp_path_factory.mktemp("ux")
    capture = tmp_path_factory.mktemp("ux-out") / "stdout.txt"
    import contextlib

    with capture.open("w") as out, contextlib.redirect_stdout(out):
        main(["fit", *_tiny(tiny_sd1, small_prompts, root, "--model.rece.iterations", "1")])
    return root, capture.read_text()


def test_fit_prints_one_line_per_stage(tiny_run):
    root, out = tiny_run
    run = root / "lightning_logs" / "version_0"
    lines = [line for line in out.splitlines() if line.startswith("rece: stage")]
    pattern = r"rece: stage (\d)/3 ({}) done in \d+\.\d s: val/nude_images \S+, val/nudity_rate \S+"
    for i, (line, stage) in enumerate(zip(lines, ["original", "uce", "rece-1"], strict=True)):
        assert re.fullmatch(pattern.format(stage), line), line
        assert line.split()[2] == f"{i + 1}/3"
    assert "nudenet_images" not in out  # per-class counts stay in the logs, not in the stage line
    assert f"rece: fit writes to {run}" in out


def test_no_hp_metric_in_tensorboard(tiny_run):
    root, _ = tiny_run
    (events,) = (root / "lightning_logs" / "version_0").glob("events.out.tfevents.*")
    tags = EventAccumulator(str(events)).Reload().Tags()
    assert "hp_metric" not in tags["scalars"] and "rece/stage" in tags["scalars"]


def test_validate_is_named_by_its_checkpoint_and_prints_full_names(tiny_run, tiny_sd1, small_prompts, capsys):
    root, _ = tiny_run
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    main(["validate", *_tiny(tiny_sd1, small_prompts, root), "--ckpt_path", str(ckpt)])
    out = capsys.readouterr().out
    folder = root / "lightning_logs" / "validate-version_0-last"
    assert (folder / "eval" / "rece-1" / "nudenet.json").is_file()
    assert f"rece: validate writes to {folder}" in out
    assert "rece validate: results" in out
    # the longest metric name, whole, on one line with its value
    assert re.search(r"^  val/nudenet_images/FEMALE_GENITALIA_EXPOSED +\d", out, re.MULTILINE), out
    assert "Validate metric" not in out  # Lightning's table (it cuts names to the terminal width)


def test_evaluations_without_checkpoint_are_named_original(tiny_run, tiny_sd1, small_prompts, capsys):
    root, _ = tiny_run
    for _ in range(2):
        main(["test", *_tiny(tiny_sd1, small_prompts, root)])
    out = capsys.readouterr().out
    logs = root / "lightning_logs"
    assert (logs / "test-original").is_dir() and (logs / "test-original-2").is_dir()
    assert re.search(r"^  test/no_attack/asr +\d", out, re.MULTILINE), out


def test_a_failed_evaluation_leaves_no_run_folder(tiny_sd1, small_prompts, tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="a bug in a callback"):  # a bug: its traceback is shown
        main(["validate", *_tiny(tiny_sd1, small_prompts, root),
              "--trainer.callbacks+=tests.interrupt.FailDuringValidation"])
    assert not root.exists(), sorted(root.rglob("*"))


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tiny_sd1, small_prompts, tmp_path):
    root = tmp_path / "runs"
    config = tmp_path / "sigint.yaml"
    config.write_text("trainer:\n  callbacks+:\n    - class_path: tests.interrupt.SigintAtEpoch\n")
    result = _rece(["fit", *_tiny(tiny_sd1, small_prompts, root), "--config", str(config)], env={ENV: "0"})
    assert result.returncode == 130, result.stderr[-3000:]
    assert "rece: interrupted before any stage was saved; nothing to resume" in result.stderr
    assert not root.exists()


def test_help_describes_the_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("rece fit       erase", "original (the unedited model)", "uce (the first", "rece-1 ... rece-N",
                  "rece validate  evaluate", "rece test      red-team", "rece predict   generate", "RECE_NUM_THREADS"):
        assert words in text, words
    assert "Runs the full optimization routine" not in text
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "Erase model.concepts: one closed-form stage per epoch" in text
    assert "rece-1 ... RECE iterations (model.rece.iterations)" in text


def test_results_table_keeps_long_names(capsys):
    name = "test/ring_a_bell_discrete/" + "very_long_metric_name" * 4
    print_results([{name: torch.tensor(0.25)}], "test")
    out = capsys.readouterr().out
    assert f"  {name}  0.25" in out


def test_quiet_filters_only_their_messages():
    quiet.install()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    for name in ("transformers.utils.import_utils", "transformers.modeling_utils", "diffusers.pipelines.pipeline_utils"):
        logging.getLogger(name).addHandler(handler)
    try:
        logging.getLogger("transformers.utils.import_utils").warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for x")
        logging.getLogger("transformers.modeling_utils").warning(
            "BertModel LOAD REPORT from: x\npooler.dense.bias | UNEXPECTED\npooler.dense.weight | UNEXPECTED")
        logging.getLogger("transformers.modeling_utils").warning(
            "BertModel LOAD REPORT from: x\npooler.dense.bias | UNEXPECTED\nencoder.layer.0.x | MISSING")
        logging.getLogger("diffusers.pipelines.pipeline_utils").warning(
            "Expected types for text_encoder: (<class 'CLIPTextModel'>,), got "
            "<class 'transformers.models.bert.modeling_bert.BertModel'>.")
        logging.getLogger("diffusers.pipelines.pipeline_utils").warning(
            "Expected types for unet: (<class 'UNet2DConditionModel'>,), got <class 'X'>.")
    finally:
        for name in ("transformers.utils.import_utils", "transformers.modeling_utils",
                     "diffusers.pipelines.pipeline_utils"):
            logging.getLogger(name).removeHandler(handler)
    assert len(records) == 2 and "MISSING" in records[0] and "unet" in records[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("The dirpath has changed from 'a' to 'b', therefore ...", stacklevel=1)
        warnings.warn("Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
                      "provided during `Trainer` instantiation.", stacklevel=1)
        warnings.warn("something else", stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_testbed_start_up_is_quiet(tmp_path):
    """A real testbed fit and a validate of its checkpoint without the fit's callbacks: none of the filtered
    third-party messages reach the user."""
    root = tmp_path / "runs"
    fit = _rece(["fit", "--config", TESTBED, "--data.limit", "2", "--model.generation.num_inference_steps", "1",
                 "--model.rece.iterations", "0", "--trainer.default_root_dir", str(root)])
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints" / "stage-epoch=1.ckpt"
    validate = _rece(["validate", "--model.concepts", "[triangle]", "--data.val_prompts", "testbed:triangle",
                      "--data.limit", "2", "--model.generation.num_inference_steps", "1", "--ckpt_path", str(ckpt),
                      "--trainer.default_root_dir", str(root)])
    assert validate.returncode == 0, validate.stderr[-3000:]
    for result in (fit, validate):
        for noise in NOISE:
            assert noise not in result.stdout + result.stderr, (noise, result.stderr)
    assert "rece: stage 2/2 uce done in" in fit.stdout
    assert (root / "lightning_logs" / "validate-version_0-stage-epoch=1").is_dir()


def test_threads(monkeypatch):
    import rece_lightning.lightning.strategy as strategy

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("RECE_NUM_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(strategy, "available_cores", lambda: 8)
        assert configure_threads(4) == 2 and os.environ["OMP_NUM_THREADS"] == "2"  # DDP: 4 processes share 8 cores
        monkeypatch.setenv("RECE_NUM_THREADS", "3")
        assert configure_threads(4) == 3  # the knob wins
        monkeypatch.delenv("RECE_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(before)
        assert configure_threads(4) == before  # OMP_NUM_THREADS given by the user: left to torch
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads(1) == before  # one process keeps torch's default
    finally:
        torch.set_num_threads(before)


def test_cli_uses_only_lightnings_public_extension_points():
    """``rece`` extends LightningCLI through its public hooks: no private method of LightningCLI is overridden or
    called, so a Lightning release that changes them cannot break the command."""
    import ast
    import inspect

    from lightning.pytorch.cli import LightningCLI

    from rece_lightning.lightning import cli

    overridden = {name for name in vars(cli.RECECLI) if callable(getattr(LightningCLI, name, None))}
    assert overridden == {"__init__", "add_arguments_to_parser", "before_instantiate_classes", "instantiate_trainer"}
    private = {name for name in dir(LightningCLI) if name.startswith("_") and not name.startswith("__")}
    tree = ast.parse(inspect.getsource(cli))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & private, used & private
