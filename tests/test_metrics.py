"""Evaluation callbacks: NudeNet counting and the real detector, CLIP score against torchmetrics, Fréchet distance,
classifier rates, DDP gathering/deduplication, JSON audit files and a real ``Trainer`` run on a tiny pipeline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rece_lightning.errors import RECEError
from rece_lightning.lightning.callbacks import (
    ClassifierAccuracy,
    CLIPScoreMetric,
    FrechetDistance,
    ImageMetric,
    NudeNetMetric,
)
from rece_lightning.lightning.callbacks.fid import frechet_distance
from rece_lightning.lightning.callbacks.inception import INCEPTION_URL, INCEPTION_WEIGHTS, inception_weights
from rece_lightning.lightning.callbacks.nudenet import NUDENET_SHA256, RECE_CLASSES, count_detections, nudenet_labels
from rece_lightning.lightning.callbacks.records import merge_records, plain, public


def _images(n: int, size: int = 32, seed: int = 0, shift: float = 0.0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 200, size=(1, 1, 3)) + shift
        noise = rng.normal(0, 20, size=(size, size, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out


def _rows(n: int, **columns: list[str]) -> list[dict]:
    return [{"row": i, "case_number": 100 + i, "prompt": f"prompt {i}", "seed": i,
             **{k: v[i] for k, v in columns.items()}} for i in range(n)]


class TinyExtractor(nn.Module):
    """A fixed random 4-d feature extractor (float images in [0, 1] → (N, 4))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class Brightness(nn.Module):
    """A user classifier with one head: 'bright' when the mean pixel is above 0.5, else 'dark'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([(0.5 - m) * 20, (m - 0.5) * 20], dim=-1)


class _Constant(ImageMetric):
    """A minimal metric: the mean of one number per image."""

    def __init__(self) -> None:
        super().__init__("constant")

    calls = 0

    def score(self, images, rows):
        self.calls += len(images)
        return [{"value": float(np.asarray(im).mean()), "_payload": np.ones(3), "flag": np.bool_(True)} for im in images]

    def summarize(self, records):
        return {"mean_value": float(np.mean([r["value"] for r in records]))}

    def protocol(self):
        return {"rule": "mean pixel"}


# ---------------------------------------------------------------------------------------------- base class
def test_gather_dedupes_padded_rows_and_does_not_depend_on_processes():
    metric = _Constant()
    images, rows = _images(5), _rows(5)
    single = metric.records_for(images, rows)
    # two "ranks": a DistributedSampler pads rank 1 with row 0 again, shards are interleaved
    rank0 = metric.records_for([images[i] for i in (0, 2, 4)], [rows[i] for i in (0, 2, 4)])
    rank1 = metric.records_for([images[i] for i in (1, 3, 0)], [rows[i] for i in (1, 3, 0)])
    merged = merge_records([rank0, rank1])
    assert [r["row"] for r in merged] == [0, 1, 2, 3, 4]
    assert metric.summarize(merged) == metric.summarize(single)
    assert [public(r) for r in merge_records([rank1, rank0])] == [public(r) for r in merged]


def _rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from rece_lightning.lightning.callbacks.records import gather_records

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    shard = {0: [0, 2, 4], 1: [1, 3, 0]}[rank]  # rank 1 is padded with row 0, as a DistributedSampler does
    merged = merge_records(gather_records([{"row": r, "value": 1.5 * r, "rank": rank} for r in shard]))
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(merged))


def test_gather_records_across_two_real_processes(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # children inherit the imports: no start-up cost
    procs = [context.Process(target=_rank, args=(rank, str(tmp_path / "store"), str(tmp_path / f"rank{rank}.json")))
             for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]  # every process summarises the same list
    assert [(r["row"], r["rank"]) for r in results[0]] == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)]


def test_records_round_trip_through_json(tmp_path):
    metric = _Constant()
    records = metric.records_for(_images(2), _rows(2))
    assert records[0]["flag"] is True and "_payload" in records[0]  # private payload is gathered ...
    document = metric.result(records, "uce", {"epoch": 1})
    path = metric.write_json(document, tmp_path / "eval" / "uce" / "constant.json")
    loaded = json.loads(path.read_text())
    assert loaded == document and "_payload" not in loaded["records"][0]  # ... but never written
    assert loaded["summary"] == {"val/mean_value": pytest.approx(np.mean([r["value"] for r in records]))}
    assert set(loaded["records"][0]) == {"row", "case_number", "prompt", "seed", "guidance", "value", "flag"}
    assert not list(path.parent.glob(".*")), "temporary files were left behind"
    assert plain({"a": np.float32(np.nan), "b": (1, torch.tensor(2.5))}) == {"a": None, "b": [1, 2.5]}
    with pytest.raises(RECEError, match="JSON"):
        plain({"x": object()})


# ---------------------------------------------------------------------------------------------------- NudeNet
def test_nudenet_counting_rule_counts_images_not_boxes():
    metric = NudeNetMetric(threshold=0.6)
    fake = [
        [{"class": "ARMPITS_EXPOSED", "score": 0.9, "box": [0, 0, 1, 1]},
         {"class": "ARMPITS_EXPOSED", "score": 0.7, "box": [5, 5, 1, 1]}],   # two boxes, one image
        [{"class": "FEET_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]},        # = threshold: not counted (strict >)
         {"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, 1, 1]}],       # not a selected class
        [{"class": "BELLY_EXPOSED", "score": 0.61, "box": [0, 0, 1, 1]},
         {"class": "ARMPITS_EXPOSED", "score": 0.65, "box": [0, 0, 1, 1]}],
        [],
    ]
    metric.detect = lambda images: fake  # type: ignore[method-assign]
    records = metric.records_for(_images(4), _rows(4))
    assert [r["nude"] for r in records] == [True, False, True, False]
    assert records[0]["exposed"] == {"ARMPITS_EXPOSED": 0.9}
    summary = metric.summarize(records)
    assert summary["nudity_rate"] == 0.5 and summary["nude_images"] == 2.0
    assert summary["nudenet_images/ARMPITS_EXPOSED"] == 2.0 and summary["nudenet_images/BELLY_EXPOSED"] == 1.0
    assert summary["nudenet_images/FEET_EXPOSED"] == 0.0
    assert len([k for k in summary if k.startswith("nudenet_images/")]) == 9
    # UnlearnDiffAtk's threshold counts the feet at 0.6
    assert count_detections(fake[1], RECE_CLASSES, 0.45)["exposed"] == {"FEET_EXPOSED": 0.6}


def test_nudenet_classes_are_checked_against_the_package():
    assert set(RECE_CLASSES) <= set(nudenet_labels()) and len(nudenet_labels()) == 18
    with pytest.raises(RECEError, match="unknown NudeNet classes"):
        NudeNetMetric(classes=["EXPOSED_BREAST_F"])  # a NudeNet 2 label
    with pytest.raises(RECEError, match="threshold"):
        NudeNetMetric(threshold=1.5)


def test_real_nudenet_on_blank_images_and_recorded_protocol(tmp_path):
    metric = NudeNetMetric(threshold=0.45, classes=["FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"])
    blank = [Image.new("RGB", (64, 48), (255, 255, 255)), Image.new("RGB", (40, 40), (0, 0, 0))]
    records = metric.records_for(blank, _rows(2))
    assert metric.summarize(records)["nudity_rate"] == 0.0
    assert metric.records_for(blank, _rows(2)) == records  # deterministic
    protocol = metric.protocol()
    assert protocol["detector_sha256"] == NUDENET_SHA256 and protocol["is_paper_detector"]
    assert protocol["nudenet_version"] == "3.0.8"
    assert protocol["threshold"] == 0.45 and protocol["classes"] == ["FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"]
    assert "images" in protocol["counting"] and "score > threshold" in protocol["counting"]


# ------------------------------------------------------------------------------------------------- CLIP score
def test_clip_score_matches_torchmetrics(tiny_clip):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    metric = CLIPScoreMetric(model_name_or_path=str(tiny_clip), batch_size=2)
    images = _images(3, size=40)
    rows = _rows(3)
    rows[2]["prompt"] = "a very long caption " * 30  # longer than 77 tokens: cut as torchmetrics does
    records = metric.records_for(images, rows)
    assert [r["truncated"] for r in records] == [False, False, True]

    class TensorFeatures(CLIPModel):  # torchmetrics 1.9 expects tensors from get_*_features (transformers 4)
        def get_image_features(self, *args, **kwargs):
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    model = TensorFeatures.from_pretrained(tiny_clip)
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in images]
    prompts = [row["prompt"] for row in rows]
    per_image, _ = _clip_score_update(tensors, prompts, model, processor)  # torchmetrics' per-image 100*cos
    assert [r["clip_score"] for r in records] == pytest.approx(per_image.tolist(), abs=1e-3)
    reference = CLIPScore(model_name_or_path=lambda: (model, processor))
    reference.update(tensors, prompts)
    assert metric.summarize(records)["clip_score"] == pytest.approx(float(reference.compute()), abs=1e-3)
    protocol = metric.protocol()
    assert protocol["model_name_or_path"] == str(tiny_clip.resolve()) and len(protocol["weights_sha256"]) == 64


def test_clip_zero_shot_judge_picks_the_closer_label(tiny_clip):
    """The CLIP judge's verdict equals CLIP's own zero-shot classification between the two labels (the model's
    logits_per_image), target rows count towards the concept rate, the others towards preservation, and it is a
    judge the robust recipe's ``auto`` settings find."""
    from transformers import CLIPModel, CLIPProcessor

    from rece_lightning.lightning.callbacks.clip_judge import CLIPZeroShotJudge
    from rece_lightning.lightning.callbacks.metric import judges

    judge = CLIPZeroShotJudge(concept="church", anchor="building", model_name_or_path=str(tiny_clip), batch_size=2)
    images = _images(6, size=40)
    rows = _rows(6, kind=["explicit", "implicit", "paraphrase", "neighbour", "unrelated", "explicit"])
    records = judge.records_for(images, rows)
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    inputs = processor(text=["a photo of church", "a photo of building"], images=images, return_tensors="pt",
                       padding=True)
    with torch.no_grad():
        expected = (model(**inputs).logits_per_image.argmax(-1) == 0).tolist()
    assert [r["is_concept"] for r in records] == expected
    assert judge.judge(images, rows) == [e and r["kind"] not in ("neighbour", "unrelated")
                                         for e, r in zip(expected, rows, strict=True)]
    targets = [e for e, r in zip(expected, rows, strict=True) if r["kind"] not in ("neighbour", "unrelated")]
    others = [not e for e, r in zip(expected, rows, strict=True) if r["kind"] in ("neighbour", "unrelated")]
    assert judge.summarize(records) == pytest.approx({"concept_rate": sum(targets) / 4,
                                                      "preservation": sum(others) / 2})
    assert [judge.success(r) for r in records][3:5] == [None, None]
    assert judges([CLIPScoreMetric(str(tiny_clip)), judge]) == [judge]  # a CLIP score cannot judge; this can
    with pytest.raises(RECEError, match="slot"):
        CLIPZeroShotJudge(concept="church", anchor="building", model_name_or_path=str(tiny_clip),
                          template="no slot")


def test_clip_score_model_errors_name_the_fix(tmp_path):
    with pytest.raises(RECEError, match="does not exist.*Hub id"):
        CLIPScoreMetric(model_name_or_path=str(tmp_path / "missing"))
    with pytest.raises(RECEError, match="config.json"):
        CLIPScoreMetric(model_name_or_path=str(tmp_path))
    with pytest.raises(RECEError, match="not a CLIP model"):
        CLIPScoreMetric(model_name_or_path="testbed")


# -------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_is_zero_to_itself_and_grows_with_change(tmp_path):
    metric = FrechetDistance(feature_extractor=TinyExtractor())
    assert metric.name == "fd_tinyextractor"
    images, rows = _images(12, seed=1), _rows(12)
    feats = metric.features(images)
    metric.set_reference(range(12), feats)
    same = metric.summarize(metric.records_for(images, rows))["fd_tinyextractor"]
    assert abs(same) < 1e-6
    records = metric.records_for(_images(12, seed=1, shift=20.0), rows)
    small = metric.summarize(records)["fd_tinyextractor"]
    large = metric.summarize(metric.records_for(_images(12, seed=1, shift=50.0), rows))["fd_tinyextractor"]
    assert 0 < small < large
    assert all(r["feature_distance"] > 0 for r in records)  # paired with the reference image of the same row
    # the same number from a folder of images and from a saved .npz of features
    folder = tmp_path / "real"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    from_folder = FrechetDistance(feature_extractor=TinyExtractor(), reference=str(folder), name="fd_folder")
    value = from_folder.summarize(from_folder.records_for(_images(12, seed=1, shift=20.0), rows))["fd_folder"]
    assert value == pytest.approx(small, rel=1e-6)
    np.savez(tmp_path / "ref.npz", rows=np.arange(12), features=feats)
    from_npz = FrechetDistance(feature_extractor=TinyExtractor(), reference=str(tmp_path / "ref.npz"))
    assert from_npz.summarize(from_npz.records_for(_images(12, seed=1, shift=20.0), rows))[
        "fd_tinyextractor"] == pytest.approx(small, rel=1e-9)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_on_testbed_classifier_features_is_named_as_such():
    from rece_lightning.testbed import Scene, render

    metric = FrechetDistance(feature_extractor="testbed")
    assert metric.name == "fd_testbed_classifier"
    scenes = [Scene(s, c, "solid", "black") for s in ("triangle", "circle", "square") for c in ("red", "blue")]
    images = [render(s) for s in scenes]
    metric.set_reference(range(6), metric.features(images))
    assert metric.features(images).shape == (6, 256)
    assert abs(metric.summarize(metric.records_for(images, _rows(6)))["fd_testbed_classifier"]) < 1e-3
    assert "not an Inception distance" in metric.protocol()["extractor"]["note"]


def test_fid_without_torch_fidelity_says_how_to_install_it(tmp_path):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed")
    weights = tmp_path / INCEPTION_WEIGHTS
    weights.write_bytes(b"not used")
    with pytest.raises(RECEError, match=r"torch-fidelity.*torchvision.*index-url.*rece-lightning\[fid\]"):
        FrechetDistance(feature_extractor_weights_path=str(weights))  # when built, before any image is generated


def _offline(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> None:
    """An empty torch hub cache and no way out (every proxy variable points at a closed local port)."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_inception_weights_come_from_torch_hub_cache(tmp_path, monkeypatch):
    """The default FID weights are torch-fidelity's published file in torch's hub cache (where torch-fidelity caches
    it); missing and impossible to download, they are one error naming the file, the URL and the folder."""
    _offline(monkeypatch, tmp_path / "torch")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    with pytest.raises(RECEError) as err:
        inception_weights()
    message = str(err.value)
    assert "\n" not in message and INCEPTION_WEIGHTS in message and INCEPTION_URL in message
    assert str(cached.parent) in message and "feature_extractor_weights_path" in message
    assert not cached.parent.exists() or list(cached.parent.iterdir()) == []  # no partial download left behind
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"weights")
    assert inception_weights() == cached
    own = tmp_path / "mine.pth"
    own.write_bytes(b"weights")
    assert inception_weights(own) == own


def test_fid_weights_name_is_the_published_one():
    """The name in the preset and the URL are torch-fidelity's (checked against torch-fidelity when installed)."""
    from tests.conftest import REPO

    preset = (REPO / "callbacks" / "fid.yaml").read_text()
    assert INCEPTION_WEIGHTS in preset and "pt_inception" not in preset
    assert INCEPTION_URL.endswith("/" + INCEPTION_WEIGHTS)
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is not None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        assert INCEPTION_URL == URL_INCEPTION_V3


def test_frechet_distance_rejects_bad_configuration(tmp_path):
    with pytest.raises(RECEError, match="not both"):
        FrechetDistance(feature_extractor_weights_path=str(tmp_path / INCEPTION_WEIGHTS), feature_extractor="testbed")
    with pytest.raises(RECEError, match=f"do not exist; give torch-fidelity's {INCEPTION_WEIGHTS}"):
        FrechetDistance(feature_extractor_weights_path=str(tmp_path / INCEPTION_WEIGHTS))
    with pytest.raises(RECEError, match="reference"):
        FrechetDistance(feature_extractor="testbed", reference=str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ classifiers
def test_testbed_classifier_rates_per_kind():
    from rece_lightning.testbed import Scene, render

    metric = ClassifierAccuracy()  # the testbed classifier; concept from the rows' 'concept' column
    cases = [  # kind, rendered scene, ground-truth columns as in triangle.csv
        ("explicit", Scene("triangle", "red", "solid", "black"), {"shape": "triangle", "color": "red"}),
        ("implicit", Scene("circle", "yellow", "solid", "black"), {"shape": "triangle", "color": "yellow"}),
        ("neighbour", Scene("circle", "red", "outlined", "black"), {"shape": "circle", "color": "red"}),
        ("neighbour", Scene("triangle", "blue", "solid", "black"), {"shape": "square", "color": "blue"}),
        ("unrelated", Scene("heart", "red", "solid", "white"), {"shape": "heart", "color": "red", "pattern": "solid"}),
    ]
    rows = _rows(5, kind=[c[0] for c in cases], concept=["triangle"] * 5)
    for row, case in zip(rows, cases, strict=True):
        row.update({"shape": "", "color": "", "pattern": "", "background": "", **case[2]})
    records = metric.records_for([render(c[1]) for c in cases], rows)
    assert [r["predicted"]["shape"] for r in records] == ["triangle", "circle", "circle", "triangle", "heart"]
    assert records[0]["attribute"] == "shape" and records[2]["truth"] == {"shape": "circle", "color": "red"}
    assert metric.summarize(records) == {
        "concept_rate": 0.5, "concept_rate/explicit": 1.0, "concept_rate/implicit": 0.0,
        "preservation": pytest.approx(2 / 3), "preservation/neighbour": 0.5, "preservation/unrelated": 1.0,
    }


def test_user_classifier_without_kinds_uses_the_class_column(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("dark\nbright\n")
    metric = ClassifierAccuracy(classifier=Brightness(), labels=str(labels), concept="dark", image_size=8)
    images = [Image.new("RGB", (16, 16), (v, v, v)) for v in (10, 20, 240, 10)]
    rows = _rows(4, **{"class": ["dark", "dark", "bright", "bright"]})
    summary = metric.summarize(metric.records_for(images, rows))
    assert summary == {"concept_rate": 1.0, "preservation": 0.5}
    with pytest.raises(RECEError, match="cannot tell which classifier head"):
        ClassifierAccuracy(classifier=Brightness(), labels=["dark", "bright"], concept="church")
    with pytest.raises(RECEError, match="needs labels"):
        ClassifierAccuracy(classifier=Brightness())


# -------------------------------------------------------------------------------------------- Lightning run
def test_trainer_fit_logs_gathers_and_writes_json(tiny_sd1, tiny_clip, tmp_path):
    from rece_lightning.lightning.data import RECEDataModule
    from rece_lightning.lightning.module import RECEModule

    prompts = tmp_path / "prompts.csv"
    with prompts.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_number", "prompt", "evaluation_seed", "class"])
        writer.writerows([[10, "a photo of a cat", 1, "dark"], [11, "a dog", 2, "bright"],
                          [12, "a red car", 3, "dark"], [13, "nude", 4, "bright"], [14, "unused", 5, "dark"]])
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], generation={"num_inference_steps": 1},
                        rece={"iterations": 0})
    spy = _Constant()
    callbacks = [
        spy,
        NudeNetMetric(),
        CLIPScoreMetric(model_name_or_path=str(tiny_clip)),
        FrechetDistance(feature_extractor=TinyExtractor(), name="fd_tiny"),
        ClassifierAccuracy(classifier=Brightness(), labels=["dark", "bright"], concept="dark"),
    ]
    trainer = L.Trainer(max_epochs=2, callbacks=callbacks, default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(module, RECEDataModule(val_prompts=str(prompts), limit=4, batch_size=3))
    assert module.stages == ["original", "uce"]
    assert spy.calls == 8, "the sanity check must not be scored (2 stages x 4 images)"
    logged = trainer.callback_metrics
    for key in ("val/nudity_rate", "val/nudenet_images/ARMPITS_EXPOSED", "val/clip_score", "val/fd_tiny",
                "val/concept_rate", "val/preservation"):
        assert key in logged, key
    root = Path(trainer.log_dir) / "eval"
    for stage in ("original", "uce"):
        for name in ("nudenet", "clip_score", "fd_tiny", "classifier"):
            document = json.loads((root / stage / f"{name}.json").read_text())
            assert document["stage"] == stage and document["num_images"] == 4
            assert [r["row"] for r in document["records"]] == [0, 1, 2, 3]
            assert [r["case_number"] for r in document["records"]] == [10, 11, 12, 13]
            assert document["protocol"] and document["trainer_fn"] == "fit"
    assert json.loads((root / "uce" / "nudenet.json").read_text())["protocol"]["detector_sha256"] == NUDENET_SHA256
    fd = json.loads((root / "uce" / "fd_tiny.json").read_text())
    assert fd["summary"]["val/fd_tiny"] == pytest.approx(float(logged["val/fd_tiny"]))
    assert fd["protocol"]["reference"] == "original" and fd["protocol"]["reference_images"] == 4
    assert json.loads((root / "original" / "fd_tiny.json").read_text())["summary"] == {}  # it is the reference
    assert (root / "original" / "fd_tiny_features.npz").is_file()
    clip = json.loads((root / "uce" / "clip_score.json").read_text())
    assert clip["summary"]["val/clip_score"] == pytest.approx(float(logged["val/clip_score"]))

    # a later `rece validate` of the edited model reuses the saved reference features and reproduces the number
    again = FrechetDistance(feature_extractor=TinyExtractor(), name="fd_tiny",
                            reference=str(root / "original" / "fd_tiny_features.npz"))
    validator = L.Trainer(callbacks=[again], default_root_dir=tmp_path / "validate", enable_progress_bar=False,
                          enable_model_summary=False)
    validator.validate(module, RECEDataModule(val_prompts=str(prompts), limit=4, batch_size=4))
    assert float(validator.callback_metrics["val/fd_tiny"]) == pytest.approx(fd["summary"]["val/fd_tiny"], rel=1e-4)
    document = json.loads((Path(validator.log_dir) / "eval" / "uce" / "fd_tiny.json").read_text())
    assert document["trainer_fn"] == "validate" and len(document["protocol"]["reference_sha256"]) == 64


def test_callback_configs_compose_with_an_experiment_config(capsys):
    from rece_lightning.lightning.cli import main
    from tests.conftest import REPO

    args = ["fit", "--config", str(REPO / "configs" / "nudity.yaml")]
    for name in ("nudenet", "clip_score", "fid", "classifier"):
        args += ["--config", str(REPO / "callbacks" / f"{name}.yaml")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    paths = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "class_path: rece_" in line]
    assert [p.rsplit(".", 1)[1] for p in paths if ".callbacks." in p] == [
        "NudeNetMetric", "TradeoffLayout", "ImageGridLogger", "ExportEdit",  # configs/nudity.yaml's own
        "NudeNetMetric", "CLIPScoreMetric", "FrechetDistance", "ClassifierAccuracy"]  # appended by callbacks/*.yaml
