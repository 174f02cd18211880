"""``rece report``: the table of a run folder from its evaluation records or, without them, its TensorBoard files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rece_lightning.errors import RECEError
from rece_lightning.lightning.report import format_value, run_metrics, stage_order, table
from rece_lightning.recipes.selection import write_kept_stage
from tests.conftest import REPO


def _record(run: Path, stage: str, name: str, summary: dict[str, float]) -> None:
    path = run / "eval" / stage / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metric": name, "stage": stage, "summary": summary, "records": []}))


def test_stages_sort_as_the_recipe_runs_them():
    names = ["rece-10", "test-uce", "rece-2", "uce", "original", "test-original"]
    assert sorted(names, key=stage_order) == ["original", "uce", "rece-2", "rece-10", "test-original", "test-uce"]


def test_formats_rates_in_percent_and_marks_missing_values():
    assert format_value("val/concept_rate/implicit", 0.0833) == "8 %"
    assert format_value("test/RingABell/asr", 1.0) == "100 %"
    assert format_value("val/fd_testbed_classifier", 30.934) == "30.93"
    assert format_value("val/clip_score", None) == "–"


def test_several_runs_and_metric_patterns(tmp_path):
    paper, robust = tmp_path / "version_0", tmp_path / "version_1"
    for run, rates in ((paper, (1.0, 0.5, 0.25)), (robust, (1.0, 0.0, 0.0))):
        for stage, rate in zip(("original", "uce", "rece-1"), rates, strict=True):
            _record(run, stage, "classifier", {"val/concept_rate": rate, "val/preservation/neighbour": 1.0})
            _record(run, stage, "fd", {"val/fd": 2.5})
    write_kept_stage(robust, {"stage": "uce", "reason": "lowest val/concept_rate (earlier on ties)"})
    text = table([paper, robust], ["val/concept_rate"])
    assert "| version_0: uce | 50 % |" in text and "| version_1: uce (kept) | 0 % |" in text
    assert "val/fd" not in text.splitlines()[0]
    assert "version_1: kept uce: lowest val/concept_rate (earlier on ties)" in text
    assert run_metrics(paper)["rece-1"] == {"val/concept_rate": 0.25, "val/preservation/neighbour": 1.0,
                                            "val/fd": 2.5}
    with pytest.raises(RECEError, match="no metric matches"):
        table([paper], ["val/nudity_rate"])


def test_a_run_without_records_is_read_from_tensorboard(tiny_sd1, tmp_path):
    """Erase only (no validation): the stages and their relative weight change come from the TensorBoard file."""
    from rece_lightning.lightning.cli import main

    main(["fit", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[nudity]", "--model.rece.iterations", "1",
          "--model.validate_original", "false", "--trainer.default_root_dir", str(tmp_path)])
    run = tmp_path / "lightning_logs" / "version_0"
    metrics = run_metrics(run)
    assert list(metrics) == ["uce", "rece-1"]
    assert all(0 < m["rece/relative_change"] < 10 for m in metrics.values())
    assert "| rece-1 (kept) |" in table([run])


def test_errors_are_one_line(tmp_path):
    for folder, needle in ((tmp_path / "missing", "does not exist"), (tmp_path, "holds no evaluation records")):
        done = subprocess.run(["rece", "report", str(folder)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().startswith("rece: error: ") and needle in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
