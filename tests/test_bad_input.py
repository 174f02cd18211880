"""Issue 18 §2: every bad input gets one line ``rece: error: …`` naming the file, line or option and the fix, exit
status 2, no traceback, no run folder, within seconds.

Each case is its own test. They run through the ``rece`` entry point (:func:`rece_lightning.lightning.cli.main`, what the
console script calls) in a subprocess; all cases share one subprocess (:mod:`tests.rece_batch`) so that the whole
file costs one start-up of torch and Lightning. The cases that need a process of their own (a file-size limit, a
dropped capability) run the installed ``rece`` executable.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, tree_digest

VALID_CSV = "prompt,evaluation_seed,case_number\na triangle,1,0\na red circle,2,1\n"
RECE = Path(sys.executable).with_name("rece")


def _files(folder: Path) -> dict[str, Path]:
    """The bad inputs, written once."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "unterminated.csv": 'prompt,evaluation_seed\na triangle,1\n"a circle,2\na square,3\n',
        "duplicate.csv": "prompt,evaluation_seed,prompt\na,1,b\n",
        "seedless.csv": "prompt\na triangle\n",
        "seed_fraction.csv": "prompt,evaluation_seed\na triangle,1.5\n",
        "seed_huge.csv": f"prompt,evaluation_seed\na triangle,{2**70}\n",
        "seed_negative.csv": "prompt,evaluation_seed\na triangle,-1\n",
        "scalar.yaml": "model:\n  uce: 5\n",
        "scalar_model.yaml": "model: 5\n",
        "duplicate.yaml": "model:\n  concepts: [triangle]\n  concepts: [circle]\n",
        "list.yaml": "- model\n- data\n",
        "old_class_path.yaml": "trainer:\n  callbacks:\n    - class_path: rece_lightning.callbacks.fid.FIDScore\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / name
        paths[name].write_text(text, encoding="utf-8")
    paths["latin1.csv"] = folder / "latin1.csv"
    paths["latin1.csv"].write_bytes("prompt,evaluation_seed\nun café,1\n".encode("latin-1"))
    for name in ("empty.csv", "empty.yaml"):
        paths[name] = folder / name
        paths[name].write_bytes(b"")
    paths["fifo"] = folder / "prompts.fifo"
    os.mkfifo(paths["fifo"])
    paths["loop"] = folder / "loop.csv"
    os.symlink(paths["loop"], paths["loop"])
    paths["folder"] = folder / "a-folder.csv"
    paths["folder"].mkdir()
    return paths


def _fit(root: Path, *extra: str) -> list[str]:
    return ["fit", "--model.concepts", "[triangle]", "--model.rece.iterations", "0", "--model.validate_original",
            "false", "--trainer.default_root_dir", str(root), *extra]


def _validate(root: Path, prompts: Path | str) -> list[str]:
    return ["validate", "--model.concepts", "[triangle]", "--data.val_prompts", str(prompts),
            "--trainer.default_root_dir", str(root)]


CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    # prompt CSVs
    "csv-unterminated-quote": (lambda r, f: _validate(r, f["unterminated.csv"]), ("line 3", "never closed")),
    "csv-duplicate-column": (lambda r, f: _validate(r, f["duplicate.csv"]), ("'prompt' appears more than once",)),
    "csv-no-seed-column": (lambda r, f: _validate(r, f["seedless.csv"]), ("no seed column", "evaluation_seed")),
    "csv-seed-fraction": (lambda r, f: _validate(r, f["seed_fraction.csv"]), ("line 2", "'1.5' is not an integer")),
    "csv-seed-too-large": (lambda r, f: _validate(r, f["seed_huge.csv"]), ("line 2", "out of range", "2**64")),
    "csv-seed-negative": (lambda r, f: _validate(r, f["seed_negative.csv"]), ("line 2", "out of range")),
    "csv-fifo": (lambda r, f: _validate(r, f["fifo"]), ("is a FIFO",)),
    "csv-device": (lambda r, f: _validate(r, "/dev/zero"), ("/dev/zero is a device",)),
    "csv-folder": (lambda r, f: _validate(r, f["folder"]), ("is a folder",)),
    "csv-symlink-loop": (lambda r, f: _validate(r, f["loop"]), ("is a symlink loop",)),
    "csv-empty": (lambda r, f: _validate(r, f["empty.csv"]), ("empty.csv is empty",)),
    "testbed-set-unknown": (lambda r, f: _validate(r, "testbed:hexagon"),
                            ("'testbed:hexagon' names no testbed prompt set", "circle, square, triangle")),
    "csv-not-utf8": (lambda r, f: _validate(r, f["latin1.csv"]), ("is not UTF-8 text", "line 2")),
    # data options
    "data-limit-negative": (lambda r, f: _fit(r, "--data.limit", "-1"), ("data.limit must be an integer ≥ 1",)),
    "data-batch-size-zero": (lambda r, f: _fit(r, "--data.batch_size", "0"), ("data.batch_size must be",)),
    # YAML
    "yaml-scalar-section": (lambda r, f: _fit(r, "--config", str(f["scalar.yaml"])), ("'model.uce' is 5",)),
    "yaml-scalar-model": (lambda r, f: _fit(r, "--config", str(f["scalar_model.yaml"])), ("'model' is 5",)),
    "yaml-duplicate-key": (lambda r, f: _fit(r, "--config", str(f["duplicate.yaml"])),
                           ("line 3", "'concepts' is given twice")),
    "yaml-empty": (lambda r, f: _fit(r, "--config", str(f["empty.yaml"])), ("empty.yaml is empty", "(see rece fit --help)")),
    "yaml-not-a-mapping": (lambda r, f: _fit(r, "--config", str(f["list.yaml"])), ("is a list, not a mapping",)),
    "yaml-moved-class-path": (lambda r, f: _fit(r, "--config", str(f["old_class_path.yaml"])),
                              ("names rece_lightning.callbacks.fid.FIDScore", "moved to "
                               "rece_lightning.lightning.callbacks.fid.FIDScore")),
    "argv-moved-class-path": (lambda r, f: _fit(r, "--trainer.callbacks+=rece_lightning.callbacks.clip_score.CLIPScore"),
                              ("the command line names rece_lightning.callbacks.clip_score.CLIPScore",
                               "rece_lightning.lightning.callbacks.clip_score.CLIPScore")),
    # recipe
    "iterations-too-many": (lambda r, f: _fit(r, "--model.rece.iterations", "1000000000"),
                            ("rece.iterations must be ≤ 100",)),
    "lambda-extreme": (lambda r, f: _fit(r, "--model.uce.lamb", "1e308"), ("uce.lamb (λ) must be ≤ 1e+06",)),
    "scale-extreme": (lambda r, f: _fit(r, "--model.rece.erase_scale", "1e308"), ("rece.erase_scale must be ≤",)),
    "concept-unknown-tokens": (lambda r, f: _fit(r, "--model.concepts", "[😀]"), ("only unknown tokens ([UNK])",)),
    "concept-too-long": (lambda r, f: _fit(r, "--model.concepts", "[" + "triangle " * 40 + "]"),
                         ("tokens long, more than the tokenizer's",)),
    "concept-also-preserved": (lambda r, f: _fit(r, "--model.uce.preserve", "[Triangle]"),
                               ("model.uce.preserve holds 'Triangle'", "cancel the erasure")),
    "robust-judged-scale-zero": (lambda r, f: _fit(r, "--model.recipe", "robust", "--model.robust.judged_scale", "0"),
                                 ("robust.judged_scale must be > 0",)),
    "robust-judged-preserve-scale-negative": (
        lambda r, f: _fit(r, "--model.recipe", "robust", "--model.robust.judged_preserve_scale", "-1"),
        ("robust.judged_preserve_scale must be > 0",)),
    "robust-nearest-anchor-without-neighbours": (
        lambda r, f: _fit(r, "--model.recipe", "robust", "--model.robust.context_anchor", "nearest",
                          "--model.robust.neighbours", "[]"),
        ("robust.context_anchor is 'nearest'", "robust.neighbours, which is empty", "set neighbours: auto")),
}


def assert_one_error(result: dict[str, Any], *needles: str) -> str:
    """Exit 2, one ``rece: error:`` line holding every needle, nothing else on stderr but Lightning's seed line,
    no traceback."""
    err = result["stderr"]
    assert result["code"] == 2, (result["code"], err[-2000:])
    assert "Traceback" not in err + result["stdout"]
    lines = [line for line in err.splitlines() if line.strip() and "seed set to" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("rece: error: "), err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert all("seed set to" in line.lower() for line in result["stdout"].splitlines() if line.strip()), \
        result["stdout"]
    return lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    files = _files(tmp / "inputs")
    cases = [{"argv": build(tmp / "runs" / name, files), "cwd": str(REPO)} for name, (build, _) in CASES.items()]
    names = sorted(p.name for p in (tmp / "inputs").iterdir())  # the FIFO cannot be hashed: its name is checked
    (tmp / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    env = {**os.environ, "RECE_BATCH_TIMEOUT": "60"}
    done = subprocess.run([sys.executable, "-m", "tests.rece_batch", str(tmp / "cases.json"), str(tmp / "out.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp / "inputs").iterdir()) == names
    out = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
    return {name: {**result, "root": tmp / "runs" / name} for name, result in zip(CASES, out, strict=True)}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_no_run_folder(case, results):
    result = results[case]
    assert_one_error(result, *CASES[case][1])
    assert not result["root"].exists(), f"{case} left {result['root']}"
    assert result["seconds"] < 60


# ------------------------------------------------------------------------------------- cases needing a process
def _without_root_override() -> None:
    """Drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (as tests/test_cli_errors.py) so that root obeys permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _rece(args: list[str], preexec=None, timeout: int = 600) -> dict[str, Any]:
    done = subprocess.run([str(RECE), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def test_read_only_run_folders(tmp_path):
    """``lightning_logs`` exists but cannot be written (the root itself can): refused before the model loads."""
    logs = tmp_path / "runs" / "lightning_logs"
    logs.mkdir(parents=True)
    logs.chmod(0o555)
    try:
        result = _rece(_fit(tmp_path / "runs"), preexec=_without_root_override if os.geteuid() == 0 else None)
        assert_one_error(result, f"{logs} is not writable")
        assert list(logs.iterdir()) == []
    finally:
        logs.chmod(0o755)


def test_full_disk(tmp_path):
    """Writes that fail for lack of room (here a 300 kB file-size limit, EFBIG, as ENOSPC on a full disk): one line
    saying so, exit 2, and no run folder left (no stage was saved)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    root = tmp_path / "runs"
    result = _rece(_fit(root), preexec=limit)
    assert result["code"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("rece: error: ")]
    assert len(errors) == 1 and "no room left" in errors[0] and "trainer.default_root_dir" in errors[0], errors
    assert not root.exists() or not any(root.rglob("*.ckpt"))


def test_already_edited_model_as_base(tiny_sd1, tmp_path):
    """A pipeline exported by ``rece fit`` (export format ``pipeline``) carries what was erased; given as the base of
    a new run it is refused, naming the original base."""
    from diffusers import StableDiffusionPipeline

    from rece_lightning.artefacts.export import export_edit
    from rece_lightning.maths.editor import KVEditor

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None)
    editor = KVEditor.for_unet(pipe.unet)
    export_edit(editor, tmp_path / "export", ["pipeline"], pipeline=pipe,
                metadata={"hparams": {"pretrained": str(tiny_sd1), "concepts": ["nudity"]}, "stage": "uce"})
    edited = tmp_path / "export" / "pipeline"
    before = tree_digest(edited)
    result = _rece(["fit", "--model.pretrained", str(edited), "--model.concepts", "[nudity]",
                    "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert_one_error(result, "is already an edited model", "['nudity'] erased", str(tiny_sd1))
    assert tree_digest(edited) == before and not (tmp_path / "runs").exists()
    shutil.rmtree(tmp_path / "export")
