"""The evaluation cache: a cached stage gives a fresh run's numbers, the key follows the edit (not the stage name),
a corrupted entry is rewritten, DDP processes share it, and ``rece cache info|clear`` work from the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rece_lightning.artefacts.eval_cache import EvalCache, pack_records, unpack_records
from rece_lightning.lightning.cli import main

TRIANGLES = ("prompt,evaluation_seed,case_number,kind,concept,shape,color\n"
             + "".join(f"a red triangle {i},{i},{i},explicit,triangle,triangle,red\n" for i in range(3))
             + "a blue circle,7,3,unrelated,triangle,circle,blue\na green star,8,4,neighbour,triangle,star,green\n")
CALLBACKS = ["--trainer.callbacks+=rece_lightning.lightning.callbacks.ClassifierAccuracy",
             "--trainer.callbacks+=rece_lightning.lightning.callbacks.FrechetDistance",
             "--trainer.callbacks.feature_extractor=testbed",
             "--trainer.callbacks+=rece_lightning.lightning.callbacks.ImageGridLogger"]
STAGES = ("original", "uce", "rece-1")
METRICS = ("classifier", "fd_testbed_classifier")


def _fit(tiny: Path, csv: Path, root: Path, gamma: float, *extra: str) -> list[str]:
    return ["fit", "--model.pretrained", str(tiny), "--model.concepts", "[triangle]", "--model.rece.iterations", "1",
            "--model.rece.gamma", str(gamma), "--model.generation.num_inference_steps", "1",
            "--data.val_prompts", str(csv), "--data.batch_size", "2", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(root), *CALLBACKS, *extra]


def _documents(root: Path) -> dict[tuple[str, str], dict]:
    (run,) = (root / "lightning_logs").iterdir()
    return {(stage, metric): json.loads((run / "eval" / stage / f"{metric}.json").read_text())
            for stage in STAGES for metric in METRICS}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(argv)
    out, err = capsys.readouterr()
    return out + err


@pytest.fixture()
def triangles(tmp_path: Path) -> Path:
    csv = tmp_path / "triangles.csv"
    csv.write_text(TRIANGLES)
    return csv


def test_sweep_reuses_original_and_uce_with_the_fresh_numbers(tiny_sd1, triangles, tmp_path, capsys):
    """Changing γ misses on the RECE stage only; the cached stages' summaries and records equal a fresh run's, the
    JSON says which came from the cache, and a hit generates no image (the grid comes from the cache too)."""
    first = _run(_fit(tiny_sd1, triangles, tmp_path / "a", 0.1), capsys)
    assert "cache hit" not in first
    second = _run(_fit(tiny_sd1, triangles, tmp_path / "b", 0.5), capsys)
    fresh = _run(_fit(tiny_sd1, triangles, tmp_path / "c", 0.5, "--no-cache"), capsys)
    assert "cache hit" not in fresh
    a, b, c = (_documents(tmp_path / r) for r in "abc")
    for (stage, metric), doc in b.items():
        assert doc["cache"]["hit"] is (stage != "rece-1"), (stage, metric)
        assert doc["summary"] == c[stage, metric]["summary"] and doc["records"] == c[stage, metric]["records"]
        assert a[stage, metric]["cache"]["hit"] is False and c[stage, metric]["cache"] == {"hit": False, "key": None}
        if stage != "rece-1":  # same edit, same key
            assert doc["cache"]["key"] == a[stage, metric]["cache"]["key"]
    assert b["rece-1", "classifier"]["cache"]["key"] != a["rece-1", "classifier"]["cache"]["key"]
    hits = [line for line in second.splitlines() if line.startswith("rece: cache hit")]
    assert hits == [f"rece: cache hit: stage {s!r}: classifier records, fd_testbed_classifier records, image grid "
                    "reused from the evaluation cache; no image generated" for s in ("original", "uce")]
    (run,) = (tmp_path / "b" / "lightning_logs").iterdir()
    assert (run / "images" / "uce.png").read_bytes() == next((tmp_path / "c" / "lightning_logs").iterdir()).joinpath(
        "images", "uce.png").read_bytes()


def test_corrupted_entry_is_ignored_and_rewritten(tiny_sd1, triangles, tmp_path, capsys):
    argv = ["validate", "--model.pretrained", str(tiny_sd1), "--model.concepts", "[triangle]",
            "--model.generation.num_inference_steps", "1",
            "--data.val_prompts", str(triangles), "--trainer.accelerator", "cpu",
            "--trainer.callbacks+=rece_lightning.lightning.callbacks.ClassifierAccuracy"]
    _run([*argv, "--trainer.default_root_dir", str(tmp_path / "a")], capsys)
    (entry,) = EvalCache().entries()
    good = entry.read_bytes()
    content = EvalCache().load("records", entry.stem)
    assert content is not None
    at = good.index(b'"records') + 40  # one byte of the stored records changed: never trusted
    entry.write_bytes(good[:at] + (b"9" if good[at:at + 1] != b"9" else b"8") + good[at + 1:])
    assert EvalCache().load("records", entry.stem) is None
    out = _run([*argv, "--trainer.default_root_dir", str(tmp_path / "b")], capsys)
    assert "cache hit" not in out
    assert EvalCache().load("records", entry.stem) == content  # rewritten by the run that missed
    entry.write_bytes(good[: len(good) // 2])  # a partial write
    assert "cache hit" not in _run([*argv, "--trainer.default_root_dir", str(tmp_path / "c")], capsys)
    assert "cache hit" in _run([*argv, "--trainer.default_root_dir", str(tmp_path / "d")], capsys)
    docs = [json.loads(next((tmp_path / r / "lightning_logs").iterdir()).joinpath("eval/original/classifier.json")
                       .read_text()) for r in "abcd"]
    assert [d["cache"]["hit"] for d in docs] == [False, False, False, True]
    assert all(d["records"] == docs[0]["records"] and d["summary"] == docs[0]["summary"] for d in docs)


def test_private_arrays_round_trip(tmp_path):
    import numpy as np

    records = [{"row": 0, "score": 0.1, "_features": np.arange(4, dtype=np.float32)}, {"row": 1, "_x": [1, 2]}]
    packed, tensors = pack_records(records)
    cache = EvalCache(tmp_path)
    cache.save("records", "ab" * 32, {"records": packed}, tensors)
    meta, loaded = cache.load("records", "ab" * 32)
    back = unpack_records(meta["records"], loaded)
    assert back[0]["_features"].dtype == np.float32 and np.array_equal(back[0]["_features"], records[0]["_features"])
    assert back[1] == records[1] and back[0]["score"] == 0.1


def _rece(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    entry_point = Path(sys.executable).with_name("rece")  # the installed console script
    return subprocess.run([str(entry_point), *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=600)


def test_cache_info_and_clear_through_the_entry_point(tmp_path):
    cache = EvalCache()
    cache.save("records", "cd" * 32, {"records": []})
    info = _rece(["cache", "info"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert f"evaluation cache at {cache.root} (on): 1 entries" in info.stdout and "records: 1 entries" in info.stdout
    cleared = _rece(["cache", "clear"], tmp_path)
    assert cleared.returncode == 0 and "1 entries" in cleared.stdout
    assert cache.entries() == []


def test_cache_info_says_off_and_refuses_an_unknown_action(monkeypatch, capsys):
    monkeypatch.setenv("RECE_CACHE", "0")
    with pytest.raises(SystemExit) as done:
        main(["cache", "info"])
    assert done.value.code == 0 and "(off (RECE_CACHE=0)): 0 entries" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["cache", "drop"])
    assert done.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_ddp_processes_share_the_cache(tiny_sd1, triangles, tmp_path):
    """Two gloo processes: the first validation fills the cache (rank zero writes after the gather), the second
    reuses it on both processes with the same numbers."""
    docs = []
    for name in ("a", "b"):
        result = subprocess.run(
            [sys.executable, "-m", "rece_lightning.lightning.cli", "validate", "--model.pretrained", str(tiny_sd1),
             "--model.concepts", "[triangle]",
             "--model.generation.num_inference_steps", "1", "--data.val_prompts", str(triangles),
             "--data.batch_size", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
             "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path / name),
             "--trainer.callbacks+=rece_lightning.lightning.callbacks.ClassifierAccuracy",
             "--trainer.callbacks+=rece_lightning.lightning.callbacks.ImageGridLogger"],
            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        run = tmp_path / name / "lightning_logs" / "validate-original"
        docs.append(json.loads((run / "eval/original/classifier.json").read_text()))
        assert (run / "images" / "original.png").is_file()
    assert [d["cache"]["hit"] for d in docs] == [False, True]
    assert docs[0]["world_size"] == docs[1]["world_size"] == 2
    assert docs[0]["records"] == docs[1]["records"] and docs[0]["summary"] == docs[1]["summary"]
    assert {p.parent.parent.name for p in EvalCache().entries()} == {"records", "grid"}


def test_grid_key_follows_the_rows_shown_the_layout_and_the_judge():
    """The grid's verdicts come from the first judge: its protocol is part of the grid's key; rows past
    ``per_kind`` of their kind and a metric that is not a judge are not."""
    from types import SimpleNamespace

    from rece_lightning.lightning.callbacks import ImageGridLogger, ImageMetric

    class Judge(ImageMetric):
        def __init__(self, threshold: float) -> None:
            super().__init__("judge")
            self.threshold = threshold

        def score(self, images, rows):
            return [{} for _ in images]

        def summarize(self, records):
            return {}

        def protocol(self):
            return {"threshold": self.threshold}

        def success(self, record):
            return None

    class Counter(Judge):  # not a judge: success is ImageMetric's
        success = ImageMetric.success

    rows = [{"row": i, "prompt": f"p{i}", "seed": i, "kind": "explicit" if i < 3 else "unrelated"} for i in range(6)]
    grid = ImageGridLogger(per_kind=2)

    def parts(*callbacks, rows=rows, grid=grid):
        return grid.cache_parts(SimpleNamespace(callbacks=[grid, *callbacks]), rows)

    base = parts(Judge(0.5))
    assert [r["row"] for r in base["rows"]] == [0, 1, 3, 4]
    assert base["judge"]["protocol"] == {"threshold": 0.5}
    assert parts(Judge(0.6)) != base  # another threshold: other verdicts
    assert parts(Judge(0.5), Counter(0.9)) == base
    assert parts(Judge(0.5), rows=[{**r, "prompt": "x"} if r["row"] == 2 else r for r in rows]) == base  # not shown
    assert parts(Judge(0.5), rows=[{**r, "prompt": "x"} if r["row"] == 1 else r for r in rows]) != base
    assert parts(Judge(0.5), grid=ImageGridLogger(per_kind=2, tile=64))["grid"] != base["grid"]
    assert parts()["judge"] is None


def test_every_cache_of_the_package_lives_under_one_folder(tmp_path, monkeypatch):
    """The evaluation cache, the robust search cache and the generated testbed prompt sets all follow
    ``$RECE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rece-lightning`` (one owner: ``rece_lightning.files.cache_dir``)."""
    from rece_lightning.files import cache_dir
    from rece_lightning.testbed.prompts import prompt_csv

    monkeypatch.delenv("RECE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "rece-lightning"
    assert EvalCache().root == root and cache_dir() == root
    assert Path(prompt_csv("star")).parent == root / "testbed-prompts"
    monkeypatch.setenv("RECE_CACHE_DIR", str(tmp_path / "mine"))
    assert EvalCache().root == cache_dir() == tmp_path / "mine"
    assert Path(prompt_csv("star")).is_file() and Path(prompt_csv("star")).parent == tmp_path / "mine" / "testbed-prompts"
