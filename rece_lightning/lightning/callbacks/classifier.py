"""Erasure and preservation measured by an image classifier (the object protocol of ESD, UCE and RECE).

On *target* prompts (those that should show the erased concept) the **concept rate** is the fraction of images
classified as the erased concept: lower is better erasure. On the *other* prompts the **preservation accuracy** is the
fraction of images whose predicted labels match the row's ground truth: higher is better preservation.

Which rows are targets:

* rows with a ``kind`` column (the testbed CSVs): ``explicit`` / ``paraphrase`` / ``implicit`` are targets,
  ``neighbour`` / ``unrelated`` are preservation rows, and the rates are also reported per kind;
* otherwise, rows whose ground-truth column of the concept's attribute (e.g. ``class``) equals the concept are targets
  and all other rows are preservation rows (Imagenette-style CSVs: ``class`` = ``church``, ``parachute``, …);
* rows with no ground truth at all are targets.

Ground truth is every non-empty column of the row named like a classifier head (testbed: ``shape``, ``color``,
``pattern``, ``background``; a single-head classifier: ``class``). Labels are compared case-insensitively; a
predicted label written as synonyms ``"tench, Tinca tinca"`` (ImageNet style) matches any of them.

Classifiers: ``"testbed"`` (the testbed's :class:`~rece_lightning.testbed.AttributeClassifier`, via
:func:`~rece_lightning.testbed.classify`) or any user-supplied ``nn.Module``/callable mapping float images
``(N, 3, H, W)`` in ``[0, 1]`` to logits ``(N, C)`` or ``{head: logits}``, plus its label names. torchvision is not a
dependency, so e.g. a ResNet-50 for Imagenette is supplied by the user as a module with its weights, with ``labels``
the 1000 ImageNet class names and ``mean``/``std`` its input normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.files import file_sha256
from rece_lightning.lightning.callbacks.metric import ImageMetric
from rece_lightning.lightning.callbacks.records import mean as average
from rece_lightning.models.source import TESTBED, is_testbed

TARGET_KINDS: tuple[str, ...] = ("explicit", "paraphrase", "implicit")
PRESERVE_KINDS: tuple[str, ...] = ("neighbour", "unrelated")


def _norm(label: Any) -> str:
    return str(label).strip().lower()


def label_matches(predicted: str, truth: str) -> bool:
    """Case-insensitive equality; a predicted ``"a, b"`` (ImageNet synonyms) matches ``a`` or ``b``."""
    p, t = _norm(predicted), _norm(truth)
    return p == t or t in {s.strip() for s in p.split(",")}


def _read_labels(labels: Sequence[str] | Mapping[str, Sequence[str]] | str) -> dict[str, list[str]] | list[str]:
    if isinstance(labels, str):
        path = Path(labels).expanduser()
        if not path.is_file():
            raise RECEError(f"label file {path} does not exist; give one label per line in output order")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if isinstance(labels, Mapping):
        return {str(k): [str(v) for v in vs] for k, vs in labels.items()}
    return [str(v) for v in labels]


class ClassifierAccuracy(ImageMetric):
    """Concept rate on target prompts and preservation accuracy on the others (see the module docstring).

    Logged: ``<prefix>/concept_rate`` and ``<prefix>/preservation``, and with a ``kind`` column
    ``<prefix>/concept_rate/<kind>`` (explicit, paraphrase, implicit) and ``<prefix>/preservation/<kind>``
    (neighbour, unrelated). A key is omitted when no row falls in it.

    Args:
        classifier: ``"testbed"`` or an ``nn.Module``/callable (float images in ``[0, 1]`` → logits or
            ``{head: logits}``).
        labels: label names of a user classifier: a list (one head, named by ``attribute`` or ``class``), a mapping
            head → list, or a text file with one label per line.
        concept: the erased label (e.g. ``triangle``, ``church``); default: each row's ``concept`` column.
        attribute: the head holding the concept; default: the only head whose labels include it.
        target_kinds, preserve_kinds: values of the ``kind`` column counted as targets / preservation rows.
        image_size: square input size of a user classifier (PIL bicubic resize); ``None`` keeps the image size.
        mean, std: per-channel normalisation of a user classifier's input (e.g. ImageNet's).
        batch_size: images per forward pass.
        name, prefix, save_json: see :class:`~rece_lightning.lightning.callbacks.metric.ImageMetric`.
    """

    def __init__(
        self,
        classifier: nn.Module | str = TESTBED,
        labels: list[str] | dict[str, list[str]] | str | None = None,
        concept: str | None = None,
        attribute: str | None = None,
        target_kinds: list[str] | None = None,
        preserve_kinds: list[str] | None = None,
        image_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        batch_size: int = 64,
        name: str = "classifier",
        prefix: str = "val",
        save_json: bool = True,
        sources: list[str] | None = None,
    ) -> None:
        super().__init__(name, prefix, save_json, sources)
        if isinstance(classifier, str) and not is_testbed(classifier):
            raise RECEError(f"classifier must be '{TESTBED}' or an nn.Module/callable, got {classifier!r}")
        if not isinstance(classifier, str) and not callable(classifier):
            raise RECEError(f"classifier must be callable, got {type(classifier).__name__}")
        if not is_testbed(classifier) and labels is None:
            raise RECEError("a user classifier needs labels (its class names, in output order)")
        if (mean is None) != (std is None):
            raise RECEError("give both mean and std (or neither)")
        self.classifier = classifier
        self.heads: dict[str, list[str]] | None = None
        if labels is not None:
            read = _read_labels(labels)
            self.heads = dict(read) if isinstance(read, dict) else {attribute or "class": read}
        self.concept, self.attribute = concept, attribute
        self.target_kinds = [_norm(k) for k in (target_kinds or TARGET_KINDS)]
        self.preserve_kinds = [_norm(k) for k in (preserve_kinds or PRESERVE_KINDS)]
        self.image_size, self.batch_size = image_size, batch_size
        self.mean, self.std = mean, std
        self._model: Any = None
        if self.heads is not None and concept is not None:
            self.concept_attribute(concept)

    # ------------------------------------------------------------------------------------ classifier
    def prepare(self, pl_module: L.LightningModule | None = None) -> None:
        if self._model is not None:
            return
        if is_testbed(self.classifier):
            from rece_lightning.testbed import load_testbed_classifier

            self._model = load_testbed_classifier()
            self.heads = {k: list(v) for k, v in self._model.attributes.items()}
            if self.concept is not None:
                self.concept_attribute(self.concept)
        else:
            self._model = self.classifier
        if isinstance(self._model, nn.Module):
            self._model.eval().requires_grad_(False)

    def concept_attribute(self, concept: str) -> str:
        """The head whose labels include ``concept`` (or the configured ``attribute``)."""
        assert self.heads is not None
        if self.attribute is not None:
            if self.attribute not in self.heads:
                raise RECEError(f"attribute {self.attribute!r} is not a classifier head ({sorted(self.heads)})")
            if not any(label_matches(label, concept) for label in self.heads[self.attribute]):
                raise RECEError(f"concept {concept!r} is not a label of head {self.attribute!r}")
            return self.attribute
        found = [h for h, labels in self.heads.items() if any(label_matches(lab, concept) for lab in labels)]
        if len(found) != 1:
            where = "no head has it as a label" if not found else f"heads {found} all have it"
            raise RECEError(f"cannot tell which classifier head holds concept {concept!r}: {where}; set attribute")
        return found[0]

    def _tensor(self, images: Sequence[Image.Image]) -> Tensor:
        ims = [im.convert("RGB") for im in images]
        if self.image_size is not None:
            ims = [im.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC) for im in ims]
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ims])).permute(0, 3, 1, 2)
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean).view(1, -1, 1, 1)) / torch.tensor(self.std).view(1, -1, 1, 1)
        return x

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> list[dict[str, tuple[str, float]]]:
        """Per image ``{head: (label, probability)}``."""
        self.prepare()
        assert self.heads is not None
        if is_testbed(self.classifier):
            from rece_lightning.testbed import classify

            model = self._model.to(self.device)
            result = classify(list(images), model=model, batch_size=self.batch_size)
            probs = {h: torch.as_tensor(result[f"{h}_prob"]) for h in self.heads}
        else:
            model: Callable[[Tensor], Any] = self._model
            if isinstance(model, nn.Module):
                model = model.to(self.device)
            chunks: dict[str, list[Tensor]] = {h: [] for h in self.heads}
            for start in range(0, len(images), self.batch_size):
                out = model(self._tensor(images[start:start + self.batch_size]).to(self.device))
                out = out if isinstance(out, Mapping) else {next(iter(self.heads)): out}
                for head in self.heads:
                    if head not in out:
                        raise RECEError(f"the classifier returned no output for head {head!r} (got {sorted(out)})")
                    chunks[head].append(out[head].float().softmax(-1).cpu())
            probs = {h: torch.cat(c) for h, c in chunks.items()}
            for head, p in probs.items():
                if p.shape[-1] != len(self.heads[head]):
                    raise RECEError(f"head {head!r} has {p.shape[-1]} outputs but {len(self.heads[head])} labels")
        out_list = []
        for i in range(len(images)):
            item = {}
            for head, p in probs.items():
                j = int(p[i].argmax())
                item[head] = (self.heads[head][j], float(p[i, j]))
            out_list.append(item)
        return out_list

    # ---------------------------------------------------------------------------------- ImageMetric
    def _role(self, row: Mapping[str, Any], concept: str, attribute: str) -> str | None:
        kind = _norm(row.get("kind") or "")
        if kind:
            if kind in self.target_kinds:
                return "target"
            return "preserve" if kind in self.preserve_kinds else None
        truth = row.get(attribute)
        if truth is None or str(truth).strip() == "":
            return "target"
        return "target" if label_matches(concept, str(truth)) else "preserve"

    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        predictions = self.predict(images)
        assert self.heads is not None
        records = []
        for row, pred in zip(rows, predictions, strict=True):
            concept = self.concept if self.concept is not None else row.get("concept")
            if not concept:
                raise RECEError("the erased concept is unknown: set concept, or give the prompts a 'concept' column")
            attribute = self.concept_attribute(str(concept))
            truth = {h: str(row[h]) for h in self.heads if str(row.get(h) or "").strip()}
            role = self._role(row, str(concept), attribute)
            preserved = None
            if role == "preserve" and truth:
                preserved = all(label_matches(pred[h][0], t) for h, t in truth.items())
            records.append({
                "kind": row.get("kind"),
                "role": role,
                "concept": str(concept),
                "attribute": attribute,
                "predicted": {h: label for h, (label, _) in pred.items()},
                "probability": {h: p for h, (_, p) in pred.items()},
                "truth": truth,
                "is_concept": label_matches(pred[attribute][0], str(concept)),
                "preserved": preserved,
            })
        return records

    def success(self, record: Mapping[str, Any]) -> bool | None:
        """A target image classified as the erased concept."""
        return bool(record["is_concept"]) if record.get("role") == "target" else None

    def verdict(self, record: Mapping[str, Any]) -> tuple[str, bool] | None:
        """Targets: ``concept`` (still shown) or ``erased``; preservation rows: ``kept`` (labels as prompted) or
        ``changed: <predicted labels that differ>``."""
        if record.get("role") == "preserve" and record.get("preserved") is not None:
            if record["preserved"]:
                return "kept", True
            predicted, truth = record.get("predicted") or {}, record.get("truth") or {}
            wrong = [str(predicted.get(h)) for h, t in truth.items() if not label_matches(str(predicted.get(h)), t)]
            return "changed: " + " ".join(wrong), False
        return super().verdict(record)

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        summary: dict[str, float] = {}
        targets = [r for r in records if r["role"] == "target"]
        kept = [r for r in records if r["role"] == "preserve" and r["preserved"] is not None]
        if targets:
            summary["concept_rate"] = average([r["is_concept"] for r in targets])
        if kept:
            summary["preservation"] = average([r["preserved"] for r in kept])
        for kind in self.target_kinds:
            values = [r["is_concept"] for r in targets if _norm(r["kind"] or "") == kind]
            if values:
                summary[f"concept_rate/{kind}"] = average(values)
        for kind in self.preserve_kinds:
            values = [r["preserved"] for r in kept if _norm(r["kind"] or "") == kind]
            if values:
                summary[f"preservation/{kind}"] = average(values)
        return summary

    def protocol(self) -> dict[str, Any]:
        if is_testbed(self.classifier):
            from rece_lightning.testbed.classifier import CLASSIFIER_DIR

            weights = Path(CLASSIFIER_DIR) / "model.safetensors"
            about: dict[str, Any] = {"classifier": "rece_lightning.testbed AttributeClassifier",
                                     "weights_sha256": file_sha256(weights) if weights.is_file() else None}
        else:
            about = {"classifier": f"{type(self.classifier).__module__}.{type(self.classifier).__qualname__}",
                     "image_size": self.image_size, "mean": self.mean, "std": self.std}
        return {
            **about,
            "heads": {h: list(v) for h, v in (self.heads or {}).items()},
            "concept": self.concept or "per row ('concept' column)",
            "attribute": self.attribute or "inferred: the head whose labels include the concept",
            "target_kinds": self.target_kinds,
            "preserve_kinds": self.preserve_kinds,
            "concept_rate": "fraction of target images whose predicted concept-head label is the concept",
            "preservation": "fraction of preservation images whose predicted labels match every non-empty "
                            "ground-truth column named like a head",
            "label_match": "case-insensitive; 'a, b' synonyms match a or b",
        }
