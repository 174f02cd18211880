"""Issue 18 §3: a property-based fuzz pass (Hypothesis) over the prompt CSV and the YAML config of ``rece fit``.

Valid files are mutated byte by byte and line by line; whatever comes out, ``rece`` must exit 0, or exit 2 with one
``rece: error:`` line — never a traceback, never a hang (each call is stopped after 30 s), never a changed file
outside the run's own new folder. The runs are erase-only testbed fits with validation off
(``--trainer.limit_val_batches 0``: the prompt file is still read and checked, no image is generated), so an
accepted input costs about a second; the iterations and the ``original`` stage are set on the command line, where
no mutation reaches them. The calls run in this process (:func:`tests.rece_batch.run`, the console script's function
with a SIGALRM timeout): a subprocess per example would spend its time starting torch.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rece_batch import run

VALID_CSV = 'prompt,evaluation_seed,case_number,kind\na triangle,1,0,explicit\n"a red, round circle",2,1,unrelated\n'
VALID_YAML = """\
model:
  concepts: [triangle]
  anchor: " "
  uce:
    lamb: 0.5
    preserve_scale: 1.0
  generation:
    num_inference_steps: 2
data:
  batch_size: 2
  limit: 2
"""
PIECES = ['"', ",", "\n", "\r\n", ":", " ", "-", "[", "]", "{", "}", "#", "0", "1.5", "-1", "18446744073709551616",
          "\x00", "\ufeff", "é", "😀", "prompt", "evaluation_seed", "model", "uce", "concepts", "  ", "\t", "null"]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def mutated(draw: st.DrawFn, text: str) -> bytes:
    """``text`` after 1 to 4 edits: insert, delete or replace a span with an interesting piece or random bytes,
    duplicate or drop a line."""
    data = text.encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "bytes", "duplicate-line", "drop-line"]))
        at = draw(st.integers(0, len(data)))
        if kind in ("insert", "replace"):
            piece = draw(st.sampled_from(PIECES)).encode("utf-8")
            end = at + (draw(st.integers(0, 6)) if kind == "replace" else 0)
            data = data[:at] + piece + data[end:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)):]
        elif kind == "bytes":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        else:
            lines = data.split(b"\n")
            index = draw(st.integers(0, max(0, len(lines) - 1)))
            if kind == "duplicate-line":
                lines.insert(index, lines[index])
            elif len(lines) > 1:
                del lines[index]
            data = b"\n".join(lines)
    return data


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _check(csv: bytes, yaml: bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rece-fuzz-"))
    try:
        (folder / "prompts.csv").write_bytes(csv)
        (folder / "config.yaml").write_bytes(yaml)
        root = folder / "runs"
        before = _snapshot(folder)
        result = run(["fit", "--config", str(folder / "config.yaml"), "--data.val_prompts", str(folder / "prompts.csv"),
                      "--model.rece.iterations", "0", "--model.validate_original", "false",
                      "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
                      "--trainer.default_root_dir", str(root)], cwd=None, timeout=30)
        err = result["stderr"]
        assert result["code"] in (0, 2), (result["code"], err[-3000:])
        assert "Traceback" not in err + result["stdout"], err[-3000:]
        after = _snapshot(folder)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        if result["code"] == 2:
            errors = [line for line in err.splitlines() if line.startswith("rece: error: ")]
            assert len(errors) == 1, err[-3000:]
            assert not changed and not root.exists(), sorted(changed)
        else:
            (run_folder,) = (root / "lightning_logs").iterdir()
            outside = {k for k in changed if not k.startswith(str(run_folder.relative_to(folder)) + "/")}
            assert not outside, sorted(outside)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@SETTINGS
@given(csv=mutated(VALID_CSV))
def test_mutated_prompt_csv(csv):
    _check(csv, VALID_YAML.encode("utf-8"))


@SETTINGS
@given(yaml=mutated(VALID_YAML))
def test_mutated_config_yaml(yaml):
    _check(VALID_CSV.encode("utf-8"), yaml)


def test_the_valid_files_run():
    """The unmutated files are accepted (exit 0), so the properties above are not only about errors."""
    _check(VALID_CSV.encode("utf-8"), VALID_YAML.encode("utf-8"))
