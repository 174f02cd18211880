"""What a person sees: the trade-off figures and HParams in TensorBoard, labelled image grids of every prompt kind,
Markdown text, the model card of the export and the progress lines of a piped ``rece fit``."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rece_lightning.lightning.callbacks import ClassifierAccuracy, ImageGridLogger, StageReport, console, report
from rece_lightning.lightning.callbacks.image_grid import KIND_ORDER, labelled_grid
from rece_lightning.lightning.callbacks.tradeoff import TradeoffLayout, tradeoff_figure
from rece_lightning.lightning.model_card import model_card, read_front_matter
from rece_lightning.testbed import PROMPTS_DIR
from tests.conftest import REPO

STAGES = ["original", "uce", "rece-1"]
PER_KIND = 2


def _subset(path: Path, per_kind: int = PER_KIND) -> list[dict[str, str]]:
    """The first ``per_kind`` rows of every kind of the testbed's triangle prompts, written to ``path``."""
    with (Path(PROMPTS_DIR) / "triangle.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for kind in KIND_ORDER for r in [r for r in rows if r["kind"] == kind][:per_kind]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return chosen


@pytest.fixture(scope="module")
def testbed_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The testbed main job (configs/testbed.yaml) on 2 prompts of every kind, 2 denoising steps, UCE + 1 RECE
    iteration, through the installed entry point with its output piped."""
    tmp = tmp_path_factory.mktemp("tradeoff")
    prompts = tmp / "triangle.csv"
    _subset(prompts)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", report.EVERY_ENV: "0.5"}
    result = subprocess.run(
        [sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", str(REPO / "configs" / "testbed.yaml"),
         "--data.val_prompts", str(prompts), "--model.rece.iterations", "1",
         "--model.generation.num_inference_steps", "2", "--trainer.default_root_dir", str(tmp / "runs")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "lightning_logs" / "version_0", result


def _events(run: Path) -> EventAccumulator:
    (path,) = run.glob("events.out.tfevents.*")
    return EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0, "scalars": 0}).Reload()


def _text(events: EventAccumulator, tag: str) -> str:
    return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()


def _kept(run: Path, stdout: str) -> str:
    return re.search(r"^rece: kept stage '([\w-]+)'", stdout, re.MULTILINE).group(1)


def test_tradeoff_figures_have_one_point_per_stage(testbed_run):
    run, result = testbed_run
    events = _events(run)
    tags = [t for t in events.Tags()["images"] if "tradeoff" in t]
    assert "tradeoff/concept_rate_vs_preservation" in tags and "tradeoff/implicit_prompts_vs_unrelated_prompts" in tags
    figures = events.Images("tradeoff/concept_rate_vs_preservation")
    assert [f.step for f in figures] == [0, 1, 2]  # one figure after every stage
    import io

    assert Image.open(io.BytesIO(figures[-1].encoded_image_string)).size == (640, 480)
    table = _text(events, "tradeoff/concept_rate_vs_preservation/stages")
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    kept = _kept(run, result.stdout)
    assert [r.replace("**", "").replace(" (kept)", "") for r in rows] == STAGES
    assert [r for r in rows if "(kept)" in r] == [f"**{kept}** (kept)"]
    preservation = json.loads((run / "eval" / "uce" / "classifier.json").read_text())["summary"]["val/preservation"]
    assert f"{100 * preservation:.1f} %" in table.splitlines()[3]  # rates in %


def test_tradeoff_figure_points_labels_and_units():
    points = [("original", 1.0, 1.0), ("uce", 0.5, 0.98), ("rece-1", 0.5, 0.98), ("rece-2", 0.25, 0.9)]
    figure = tradeoff_figure(points, "val/concept_rate", "val/preservation", kept="rece-2")
    ax = figure.axes[0]
    offsets = ax.collections[0].get_offsets()
    assert offsets.tolist() == [[100.0, 100.0], [50.0, 98.0], [50.0, 98.0], [25.0, 90.0]]  # in %
    labels = [t.get_text() for t in ax.texts if t.get_text() and "better" not in t.get_text()]
    assert labels == ["original", "uce, rece-1", "rece-2 (kept)"]  # one label per position
    assert ax.collections[1].get_offsets().tolist() == [[25.0, 90.0]]  # the ring around the kept stage
    assert "(%)" in ax.get_xlabel() and "↓ better" in ax.get_xlabel() and "↑ better" in ax.get_ylabel()
    distance = tradeoff_figure([("uce", 0.5, 30.0)], "val/concept_rate", "val/fd_testbed_classifier")
    assert "(%)" not in distance.axes[0].get_ylabel() and distance.axes[0].collections[0].get_offsets()[0][1] == 30.0


def test_hparams_hold_the_knobs_and_the_kept_stage_metrics(testbed_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, result = testbed_run
    events = _events(run)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    kept = _kept(run, result.stdout)
    assert start.hparams["kept_stage"].string_value == kept
    assert start.hparams["uce/lamb"].number_value == 0.5 and start.hparams["rece/gamma"].number_value == 0.1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {m.name.tag for m in experiment.metric_infos}
    assert {"kept/val/concept_rate", "kept/val/preservation", "kept/stage_index"} <= names
    rate = json.loads((run / "eval" / kept / "classifier.json").read_text())["summary"]["val/concept_rate"]
    assert events.Scalars("kept/val/concept_rate")[-1].value == pytest.approx(rate)
    assert "val/concept_rate" in events.Tags()["scalars"]
    assert len(events.Scalars("val/concept_rate")) == len(STAGES)  # no extra point on the stages' curve


def test_text_summaries_are_markdown_tables(testbed_run):
    run, _ = testbed_run
    text = _text(_events(run), "protocol/classifier")
    assert text.startswith("| field | value |\n| --- | --- |") and "```" not in text and "\\n" not in text


def test_grids_of_the_run_show_every_kind(testbed_run):
    run, _ = testbed_run
    blank = Image.new("RGB", (32, 32))
    expected = labelled_grid({k: [(blank, "p", None)] * PER_KIND for k in KIND_ORDER}, "t").size
    for stage in STAGES:
        assert Image.open(run / "images" / f"{stage}.png").size == expected
    tags = _events(run).Tags()["images"]
    assert {f"images/{s}" for s in STAGES} <= set(tags)


def test_grid_labels_every_kind_with_verdicts(tmp_path):
    """Rows of every kind (not the first rows of the file), each captioned with its prompt and the judge's
    verdict: 'concept'/'erased' on target prompts, 'kept'/'changed' on the others."""
    rows = _subset(tmp_path / "p.csv", per_kind=5)
    for i, row in enumerate(rows):
        row["row"] = i
    images = [Image.new("RGB", (32, 32), (200, 30, 30)) for _ in rows]
    judge = ClassifierAccuracy()
    judge.last_records = judge.records_for(images, rows)
    grid = ImageGridLogger(per_kind=3, max_images=64)
    batch = {key: [r[key] for r in rows] for key in rows[0]}
    grid.on_validation_batch_end(None, None, {"images": images, "rows": batch}, batch, 0)
    groups = grid.groups(judge)
    assert list(groups) == list(KIND_ORDER)
    for kind, items in groups.items():
        assert [prompt for _, prompt, _ in items] == [r["prompt"] for r in rows if r["kind"] == kind][:3]
        words = {verdict[0].split(":")[0] for _, _, verdict in items}
        assert words <= ({"concept", "erased"} if kind in ("explicit", "paraphrase", "implicit") else {"kept", "changed"})
    assert ImageGridLogger.title("rece-2", judge) == "stage rece-2 · verdicts: classifier"
    capped = ImageGridLogger(per_kind=3, max_images=7)
    capped.on_validation_batch_end(None, None, {"images": images, "rows": batch}, batch, 0)
    assert [len(items) for items in capped.groups(None).values()] == [3, 3, 1]


def test_model_card_round_trips(testbed_run):
    run, result = testbed_run
    card = (run / "export" / "README.md").read_text(encoding="utf-8")
    front = read_front_matter(card)
    assert front["base_model"] == "testbed" and front["library_name"] == "diffusers"
    assert {"concept-erasure", "rece", "lora"} <= set(front["tags"])
    kept = _kept(run, result.stdout)
    assert '"triangle" erased' in card and "| `rece.gamma` | `0.1` |" in card
    for stage in STAGES:
        assert re.search(rf"^\| (\*\*)?{stage}( \(kept\)\*\*)? \|", card, re.MULTILINE), stage
    assert f"| **{kept} (kept)** |" in card and f"The exported stage is **{kept}**" in card
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert any("pipe.load_lora_weights(EDIT)" in b for b in blocks)
    assert any("load_kv_into(pipe.unet" in b for b in blocks)
    edited = load_file(run / "export" / "kv_weights.safetensors")
    x = torch.randn(3, next(iter(edited.values())).shape[1])
    for block in blocks:  # each block, as written, on a fresh testbed pipeline
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the card's own lines)
        unet = namespace["pipe"].unet
        for key, weight in edited.items():
            layer = unet.get_submodule(key.removesuffix(".weight"))
            torch.testing.assert_close(layer(x), x @ weight.float().T, atol=1e-5, rtol=1e-4)


def test_progress_names_the_stage_when_piped(testbed_run):
    _, result = testbed_run
    out = result.stdout
    for stage in STAGES:
        assert re.search(rf"^{stage}: 0/10 images, \d+ s so far$", out, re.MULTILINE), out
    for stage in STAGES[1:]:
        assert re.search(rf"^{stage}: erasing, \d+ s so far$", out, re.MULTILINE), out
    # a line when each stage starts (the heartbeat between is timed: test_heartbeat_repeats_the_line_when_piped)
    assert "Epoch" not in out + result.stderr and "max_epochs" not in out + result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("rece")] == []  # one stream: stdout
    assert re.search(r"^rece: stage 3/3 rece-1 done in", out, re.MULTILINE)
    assert "rece: wrote the model card" in out


def test_progress_line_and_bar(monkeypatch):
    bar = StageReport()
    bar._task = {"stage": "rece-2", "what": "images", "done": 640, "total": 1280, "since": time.perf_counter() - 70}
    monkeypatch.setattr(report, "is_terminal", lambda: False)
    assert bar.status() == "rece-2: 640/1,280 images, 1 min 10 s left"
    monkeypatch.setattr(report, "is_terminal", lambda: True)
    assert re.fullmatch(r"rece-2 \[█{12}·{12}\] 640/1,280 images, 1 min 10 s left", bar.status())
    assert report.format_duration(7325) == "2 h 2 min"


def test_heartbeat_repeats_the_line_when_piped(monkeypatch, capsys):
    """Piped, the progress line repeats every ``every`` seconds while one long batch runs (a thread, not a hook)."""
    monkeypatch.setattr(report, "is_terminal", lambda: False)
    monkeypatch.setattr(console, "is_terminal", lambda: False)
    trainer = types.SimpleNamespace(is_global_zero=True, sanity_checking=False)
    bar = StageReport(every=0.05)
    bar._begin(trainer, "rece-2", "images", 1280)
    time.sleep(1.0)  # 20 periods; the thread wakes every period / 4
    bar._end()
    bar._stop.set()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3 and all(re.fullmatch(r"rece-2: 0/1,280 images, \d+ s so far", line) for line in lines)


def test_lines_clear_the_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(console, "is_terminal", lambda: True)
    console.show_status("uce [····] 0/4 images")
    console.say("rece: stage 2/3 uce done")
    console.show_status(None)
    out = capsys.readouterr().out
    assert out == "\r\033[Kuce [····] 0/4 images\r\033[Krece: stage 2/3 uce done\nuce [····] 0/4 images\r\033[K"


def test_tradeoff_layout_tags():
    layout = TradeoffLayout({"concept rate vs Fréchet distance (classifier)": ["val/concept_rate", "val/fd"]})
    assert layout.tags() == {"concept rate vs Fréchet distance (classifier)":
                             "tradeoff/concept_rate_vs_frechet_distance_classifier"}


def test_model_card_of_a_hub_model():
    card = model_card({"pretrained": "CompVis/stable-diffusion-v1-4@fp16", "concepts": ["nudity"], "anchor": " ",
                       "recipe": "paper", "rece": {"iterations": 2}, "torch_dtype": "float16"},
                      {"original": {"val/nudity_rate": 0.5}, "rece-1": {"val/nudity_rate": 0.25}}, "rece-1",
                      {"lora": "pytorch_lora_weights.safetensors"}, "/runs/export")
    front = read_front_matter(card)
    assert front == {"base_model": "CompVis/stable-diffusion-v1-4", "library_name": "diffusers",
                     "tags": ["concept-erasure", "rece", "text-to-image", "diffusers", "lora"]}
    assert ("pipe = DiffusionPipeline.from_pretrained('CompVis/stable-diffusion-v1-4', revision='fp16', "
            "torch_dtype=torch.float16)") in card
    assert "| original | 50.0 % |" in card and "| **rece-1 (kept)** | 25.0 % |" in card
    assert "load_kv_into" not in card  # only the files written
