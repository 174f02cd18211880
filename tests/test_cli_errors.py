"""Bad input to the real ``rece`` entry point: one line naming the problem and the fix, exit status 2, no traceback,
nothing written. Paths are checked before the model is loaded, so most of these tests take milliseconds."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from rece_lightning.lightning.cli import main
from tests.conftest import REPO

NUDITY = str(REPO / "configs" / "nudity.yaml")
TESTBED = str(REPO / "configs" / "testbed.yaml")
LATIN1 = "prompt,evaluation_seed\nun café à Paris,1\n".encode("latin-1")


def rece(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``rece`` in this process; its exit status, standard output and standard error."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one ``rece:`` line on stderr (containing every needle), no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rece:")]
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("rece: error: ")
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A run folder that must still not exist after a failed call."""
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def checkpoint(tiny_sd1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of ``rece fit`` (UCE only, no validation: seconds)."""
    root = tmp_path_factory.mktemp("ckpt-run")
    main(["fit", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]", "--model.rece.iterations", "0",
          "--model.validate_original", "false", "--trainer.default_root_dir", str(root)])
    (ckpt,) = (root / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    return ckpt


# ------------------------------------------------------------------------------------------------ prompt files
@pytest.mark.parametrize(
    ("subcommand", "option"),
    [("fit", "--data.val_prompts"), ("validate", "--data.val_prompts"), ("test", "--data.test_prompts"),
     ("predict", "--data.predict_prompts")],
)
def test_non_utf8_prompt_file(subcommand, option, tmp_path, root, capsys):
    bad = tmp_path / "nudity.csv"
    bad.write_bytes(LATIN1)
    code, _, err = rece([subcommand, "--config", NUDITY, option, str(bad), "--trainer.default_root_dir", str(root)],
                        capsys)
    assert_one_line(code, err, f"{bad} is not UTF-8 text (byte 0xe9 on line 2)", "save it as UTF-8")
    assert not root.exists()


def test_non_utf8_preserve_csv(tmp_path, root, capsys):
    bad = tmp_path / "artists.csv"
    bad.write_bytes("artist\nAndré Derain\n".encode("latin-1"))
    code, _, err = rece(["fit", "--config", NUDITY, "--model.preserve_csv", str(bad),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, f"{bad} is not UTF-8 text", "save it as UTF-8")
    assert not root.exists()


def test_preserve_csv_without_its_column(tmp_path, root, capsys):
    csv = tmp_path / "artists.csv"
    csv.write_text("name\nAndré Derain\n", encoding="utf-8")
    code, _, err = rece(["fit", "--config", NUDITY, "--model.preserve_csv", str(csv),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "has no column 'artist'", "model.preserve_csv_column")


def test_keep_best_naming_another_metric_than_the_robust_rule(root):
    """``keep_best`` under ``recipe: robust`` must name the stopping rule's metric (installed ``rece``, subprocess)."""
    done = subprocess.run(["rece", "fit", "--config", str(REPO / "configs" / "testbed_robust.yaml"),
                           "--model.keep_best", "val/preservation", "--trainer.default_root_dir", str(root)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert_one_line(done.returncode, done.stderr, "model.keep_best val/preservation differs from "
                    "robust.concept_metric val/concept_rate", "set robust.concept_metric")
    assert not root.exists()


def test_missing_prompt_file(tmp_path, root, capsys):
    code, _, err = rece(["validate", "--config", NUDITY, "--data.val_prompts", str(tmp_path / "nope.csv"),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "nope.csv does not exist")
    assert not root.exists()


def test_evaluation_without_prompts(root, capsys):
    code, _, err = rece(["test", "--config", NUDITY, "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "rece test needs prompts", "data.test_prompts")


def test_prompt_file_with_a_bad_seed(tmp_path, root, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,evaluation_seed\na cat,1\na dog,many\n", encoding="utf-8")
    code, _, err = rece(["validate", "--config", NUDITY, "--data.val_prompts", str(csv),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "line 3", "seed 'many' is not an integer")


def test_a_byte_order_mark_is_fine(tmp_path):
    from rece_lightning.artefacts.prompts import read_prompts

    csv = tmp_path / "excel.csv"
    csv.write_bytes("prompt,evaluation_seed\na cat,7\n".encode("utf-8-sig"))
    assert read_prompts(csv)[0]["seed"] == 7


# --------------------------------------------------------------------------------------------------- checkpoints
def _flip_pickle_byte(src: Path, dst: Path) -> None:
    """Copy ``src`` with one bit flipped in its pickled record (``data.pkl``): the file no longer decodes."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start] ^= 0x01  # the PROTO opcode that opens the pickle
    dst.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["missing", "folder", "truncated", "bit-flipped", "garbage", "not-lightning"])
def test_unusable_checkpoint(damage, checkpoint, tmp_path, root, capsys):
    bad = tmp_path / "bad.ckpt"
    expected = {"missing": "does not exist", "folder": "is a folder", "truncated": "the file is truncated",
                "bit-flipped": "the file is corrupted", "garbage": "it is not a torch checkpoint",
                "not-lightning": "is not a Lightning checkpoint"}[damage]
    if damage == "folder":
        bad.mkdir()
    elif damage == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif damage == "bit-flipped":
        _flip_pickle_byte(checkpoint, bad)
    elif damage == "garbage":
        bad.write_bytes(bytes(range(256)) * 8)
    elif damage == "not-lightning":
        torch.save({"weights": torch.zeros(2)}, bad)
    for subcommand in ("validate", "fit"):
        code, _, err = rece([subcommand, "--config", NUDITY, "--data.val_prompts", str(REPO / "tests" / "fixtures"
                             / "prompts" / "nudity.csv"), "--ckpt_path", str(bad),
                             "--trainer.default_root_dir", str(root)], capsys)
        assert_one_line(code, err, f"--ckpt_path {bad}", expected)
        assert not root.exists()


# ------------------------------------------------------------------------------------------------- run folders
def test_run_folder_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    code, _, err = rece(["fit", "--config", NUDITY, "--trainer.default_root_dir", str(blocker / "runs")], capsys)
    assert_one_line(code, err, "trainer.default_root_dir", f"{blocker} is a file, not a folder")


def test_run_folder_the_kernel_refuses(capsys):
    code, _, err = rece(["fit", "--config", NUDITY, "--trainer.default_root_dir", "/proc/rece-runs"], capsys)
    assert_one_line(code, err, "trainer.default_root_dir /proc/rece-runs is not writable")


def _without_root_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability bounding set,
    so that a root process obeys permission bits like any user (prctl(PR_CAPBSET_DROP))."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_read_only_run_folder(tmp_path):
    """A folder without write permission (chmod 555); as root the command runs without the capability that lets
    root ignore permissions. The check happens before anything is loaded."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", NUDITY,
             "--trainer.default_root_dir", str(readonly / "runs")],
            cwd=REPO, capture_output=True, text=True, timeout=600,
            preexec_fn=_without_root_override if os.geteuid() == 0 else None,
        )
        assert_one_line(result.returncode, result.stderr, f"{readonly / 'runs'} is not writable", "Permission denied")
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o755)


def test_unwritable_image_dir(tmp_path, root, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = rece(["fit", "--config", NUDITY, "--model.generation.image_dir", str(blocker / "images"),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "model.generation.image_dir")


def test_missing_uce_weights(tmp_path, root, capsys):
    code, _, err = rece(["fit", "--config", NUDITY, "--model.uce.weights", str(tmp_path / "uce.safetensors"),
                         "--trainer.default_root_dir", str(root)], capsys)
    assert_one_line(code, err, "model.uce.weights", "does not exist")


# ------------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["fit", "--config", TESTBED, "--trainer.max_epochs", "3"],
         ["trainer.max_epochs cannot be set", "model.rece.iterations", "model.validate_original"]),
        (["fit", "--config", TESTBED, "--trainer.max_epochs=3"], ["trainer.max_epochs cannot be set"]),
        (["fit", "--config", TESTBED, "--no_such_option", "1"], ["--no_such_option", "(see rece fit --help)"]),
        (["fit", "--model.rece.iterations", "many"], ["model.rece.iterations", "(see rece fit --help)"]),
        (["validate", "--config", "no/such/config.yaml"], ["no/such/config.yaml", "(see rece validate --help)"]),
        ([], ["no subcommand", "rece fit", "(see rece --help)"]),
        (["erase"], ["invalid choice: 'erase'", "(see rece --help)"]),
    ],
)
def test_usage_errors_are_one_line(argv, needles, capsys):
    code, out, err = rece(argv, capsys)
    assert_one_line(code, err, *needles)
    assert "usage:" not in err + out


def test_max_epochs_in_a_config_file(tmp_path, root, capsys):
    config = tmp_path / "epochs.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n")
    code, _, err = rece(["fit", "--config", TESTBED, "--config", str(config), "--trainer.default_root_dir", str(root)],
                        capsys)
    assert_one_line(code, err, f"{config}: trainer.max_epochs cannot be set")
    assert not root.exists()


def test_bad_thread_count(monkeypatch, root, capsys):
    code, _, err = rece(["fit", "--config", NUDITY, "--threads", "none", "--trainer.default_root_dir", str(root)],
                        capsys)
    assert_one_line(code, err, "RECE_NUM_THREADS='none'", "positive number")
    monkeypatch.delenv("RECE_NUM_THREADS", raising=False)


# ------------------------------------------------------------------------------------------ debug and late errors
def test_debug_shows_the_traceback(tmp_path, root, capsys, monkeypatch):
    bad = tmp_path / "nudity.csv"
    bad.write_bytes(LATIN1)
    argv = ["validate", "--config", NUDITY, "--data.val_prompts", str(bad), "--trainer.default_root_dir", str(root)]
    code, _, err = rece([*argv, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "UnicodeDecodeError" in err
    assert err.rstrip().splitlines()[-1].startswith("rece: error: ")
    monkeypatch.delenv("RECE_DEBUG", raising=False)
    monkeypatch.setenv("RECE_DEBUG", "1")
    code, _, err = rece(argv, capsys)
    assert code == 2 and "Traceback" in err


def test_misconfigured_callback_fails_in_one_line_and_leaves_no_run(tiny_sd1, small_prompts, root, capsys):
    """A ModelCheckpoint monitoring a metric that nothing logs fails after the first stage, before any checkpoint:
    one line, and the run folder is removed."""
    code, _, err = rece(["fit", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]",
                         "--model.rece.iterations", "0", "--data.limit", "1", "--data.val_prompts", str(small_prompts),
                         "--model.generation.num_inference_steps", "1", "--trainer.callbacks+=ModelCheckpoint",
                         "--trainer.callbacks.monitor=val/not_logged", "--trainer.default_root_dir", str(root)],
                        capsys)
    assert_one_line(code, err, "ModelCheckpoint(monitor='val/not_logged')", "could not find the monitored key")
    assert not root.exists(), sorted(root.rglob("*"))


def test_late_error_after_a_saved_stage_says_how_to_resume(tiny_sd1, small_prompts, root, capsys):
    """The same error after a stage was checkpointed (configs/nudity.yaml saves last.ckpt first): the run folder
    stays, and besides the error line the command that resumes it (once the config is fixed) is printed."""
    code, _, err = rece(["fit", "--config", NUDITY, "--model.pretrained", str(tiny_sd1), "--data.limit", "1",
                         "--model.generation.num_inference_steps", "1", "--data.val_prompts", str(small_prompts),
                         "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val/not_logged",
                         "--trainer.default_root_dir", str(root)], capsys)
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rece:")]
    assert len(lines) == 2 and lines[1].startswith("rece: error: ") and "val/not_logged" in lines[1]
    assert lines[0].startswith("rece: stopped after 1 of 5 stages (original), kept in ")
    assert "; to resume: rece fit " in lines[0] and lines[0].endswith("checkpoints/last.ckpt")
    assert (root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
