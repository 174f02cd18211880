"""Fréchet distance between the features of validation images and of a reference set (FID, Heusel et al., 2017).

``d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`` of Gaussians fitted to two feature sets, computed by torchmetrics'
``FrechetInceptionDistance`` (float64 sums, unbiased covariances) over features gathered from all processes and sorted
by prompt row, so the value does not depend on the number of processes.

Features (exactly one source):

* neither argument (the default): FID proper, torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's
  ``inception-v3-compat``, uint8 images resized to 299 px) with the standard weights torch-fidelity publishes,
  ``weights-inception-2015-12-05-6726825d.pth``, from torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where
  torch-fidelity caches them), downloaded there once when missing (:mod:`~rece_lightning.lightning.callbacks.inception`);
  ``feature_extractor_weights_path``
  gives another copy of them instead. Needs torch-fidelity (``pip install 'rece-lightning[fid]'``, after torchvision
  from torch's own index). The weights are checked to be a plain state dict of tensors
  (``torch.load(weights_only=True)``) before torch-fidelity unpickles them. Logged as ``<prefix>/fid``.
* ``feature_extractor="testbed"``: the trunk of the testbed's attribute classifier (``AttributeClassifier.features``,
  a 256-d vector). This is *not* an Inception distance and is logged as ``<prefix>/fd_testbed_classifier``.
* ``feature_extractor=<nn.Module>``: any module mapping float images ``(N, 3, H, W)`` in ``[0, 1]`` to ``(N, D)``;
  logged as ``<prefix>/fd_<module class name>`` unless ``name`` says otherwise.

Reference (``reference``):

* ``"original"`` (default): the images of the unedited model on the same prompts and seeds — within one ``rece fit``
  the validation of the ``original`` stage runs first and becomes the reference of every later stage; each record then
  also holds ``feature_distance``, the L2 distance to the original image of the same row. The reference features are
  saved as ``<log_dir>/eval/original/<name>_features.npz`` so that a later ``rece validate`` can use them, and a
  ``rece fit`` resumed in its run folder (``--ckpt_path``) after the ``original`` stage reloads them.
* a folder of real images (``*.png``, ``*.jpg``, ``*.jpeg``, ``*.webp``, sorted by name; every process computes the
  same features), or a ``.npz`` written by this callback (``rows``, ``features``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.files import atomic_path, file_sha256, tensor_sha256
from rece_lightning.lightning.callbacks.inception import FID_EXTRA, INCEPTION_URL, INCEPTION_WEIGHTS, inception_weights
from rece_lightning.lightning.callbacks.metric import ImageMetric
from rece_lightning.lightning.callbacks.run import run_dir, warn
from rece_lightning.models.source import TESTBED, is_testbed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

class _Passthrough(nn.Module):
    """Feature "extractor" for torchmetrics' FID that receives features already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(features_a: np.ndarray | Tensor, features_b: np.ndarray | Tensor) -> float:
    """Fréchet distance of two ``(N, D)`` feature sets with torchmetrics' ``FrechetInceptionDistance`` (float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a = torch.as_tensor(np.asarray(features_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(features_b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise RECEError(f"feature sets must be (N, D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise RECEError("the Fréchet distance needs at least 2 images in each set")
    metric = FrechetInceptionDistance(feature=_Passthrough(a.shape[1]), sync_on_compute=False)
    metric.update(a, real=True)
    metric.update(b, real=False)
    return float(metric.compute())


def _uint8(images: Sequence[Image.Image]) -> Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])).permute(0, 3, 1, 2)


class FrechetDistance(ImageMetric):
    """Fréchet distance of validation images to a reference set (see the module docstring).

    Args:
        feature_extractor_weights_path: a local copy of torch-fidelity's InceptionV3 weights
            (:data:`INCEPTION_WEIGHTS`); default: the copy in torch's hub cache, downloaded once when missing.
        feature_extractor: ``"testbed"`` (the testbed classifier's trunk) or an ``nn.Module`` (float images in
            ``[0, 1]`` → ``(N, D)`` features) instead of InceptionV3. Not with ``feature_extractor_weights_path``.
        feature: Inception feature layer (64, 192, 768 or 2048) for FID proper.
        reference: ``"original"``, a folder of images, or a ``.npz`` of features written by this callback.
        image_size: resize images (PIL bicubic) to this square size before an ``nn.Module`` extractor.
        batch_size: images per forward pass.
        name: metric and file name; default ``fid`` (Inception), ``fd_testbed_classifier`` or ``fd_<module class>``.
        prefix, save_json: see :class:`~rece_lightning.lightning.callbacks.metric.ImageMetric`.
    """

    def __init__(
        self,
        feature_extractor_weights_path: str | None = None,
        feature_extractor: nn.Module | str | None = None,
        feature: int = 2048,
        reference: str = "original",
        image_size: int | None = None,
        batch_size: int = 32,
        name: str | None = None,
        prefix: str = "val",
        save_json: bool = True,
        sources: list[str] | None = None,
    ) -> None:
        if feature_extractor_weights_path is not None and feature_extractor is not None:
            raise RECEError("give feature_extractor_weights_path (InceptionV3 weights for FID) or feature_extractor "
                            f"('{TESTBED}' or an nn.Module), not both")
        if isinstance(feature_extractor, str) and not is_testbed(feature_extractor):
            raise RECEError(f"feature_extractor must be '{TESTBED}' or an nn.Module, got {feature_extractor!r}")
        self.weights_path: Path | None = None
        if feature_extractor is None:
            if feature not in (64, 192, 768, 2048):
                raise RECEError(f"feature must be one of 64, 192, 768, 2048 for InceptionV3, got {feature}")
            self.weights_path = self.check_sources({"feature_extractor_weights_path": feature_extractor_weights_path})
            kind = "inception"
        elif is_testbed(feature_extractor):
            kind = "testbed_classifier"
        else:
            if not isinstance(feature_extractor, nn.Module):
                raise RECEError(f"feature_extractor must be an nn.Module, got {type(feature_extractor).__name__}")
            kind = type(feature_extractor).__name__.lower()
        default = "fid" if kind == "inception" else f"fd_{kind}"
        super().__init__(name or default, prefix, save_json, sources)
        if batch_size < 1:
            raise RECEError(f"batch_size must be ≥ 1, got {batch_size}")
        self.kind, self.feature, self.image_size, self.batch_size = kind, int(feature), image_size, batch_size
        self.module: nn.Module | None = feature_extractor if isinstance(feature_extractor, nn.Module) else None
        self._forward: Callable[[list[Image.Image]], Tensor] | None = None
        self.reference = reference
        self._reference: dict[int, np.ndarray] | None = None
        self._reference_info: dict[str, Any] = {"reference": reference}
        self._skip_summary = False
        if reference != "original":
            path = Path(reference).expanduser()
            if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
                raise RECEError(f"FID reference {path} is neither 'original', a folder of images nor a .npz of features")

    @classmethod
    def check_sources(cls, init_args: dict[str, Any]) -> Path | None:
        """The InceptionV3 weights of these arguments (:func:`inception_weights`; ``None`` for another extractor),
        after checking that torch-fidelity is installed; called by the ``rece`` command before anything loads.

        Raises:
            RECEError: the weights file is missing (and cannot be downloaded), or torch-fidelity is not installed.
        """
        if init_args.get("feature_extractor") is not None:
            return None
        path = init_args.get("feature_extractor_weights_path")
        if path is not None:
            inception_weights(path)  # a missing file is named before a missing package
        if importlib.util.find_spec("torch_fidelity") is None:
            raise RECEError(FID_EXTRA)
        return inception_weights(path)

    # ---------------------------------------------------------------------------------- extractors
    def prepare(self, pl_module: L.LightningModule | None = None) -> None:
        if self._forward is not None:
            return
        if self.kind == "inception":
            assert self.weights_path is not None
            try:  # torch-fidelity unpickles the file (weights_only=False): make sure it holds tensors only
                torch.load(self.weights_path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise RECEError(f"InceptionV3 weights {self.weights_path} are not a plain state dict of tensors "
                                f"({type(err).__name__}); use torch-fidelity's {INCEPTION_WEIGHTS}") from err
            try:
                from torchmetrics.image.fid import FrechetInceptionDistance

                inception = FrechetInceptionDistance(
                    feature=self.feature, feature_extractor_weights_path=str(self.weights_path)
                ).inception
            except ModuleNotFoundError as err:
                raise RECEError(FID_EXTRA) from err
            self.module = inception

            def forward(images: list[Image.Image]) -> Tensor:
                return inception(_uint8(images).to(self.device))
        elif self.kind == "testbed_classifier":
            from rece_lightning.testbed import load_testbed_classifier
            from rece_lightning.testbed.classifier import images_to_tensor

            classifier = load_testbed_classifier()
            self.module = classifier

            def forward(images: list[Image.Image]) -> Tensor:
                return classifier.features(images_to_tensor(images).to(self.device) * 2.0 - 1.0)
        else:
            module = self.module
            assert module is not None

            def forward(images: list[Image.Image]) -> Tensor:
                if self.image_size is not None:
                    size = (self.image_size, self.image_size)
                    images = [im.convert("RGB").resize(size, Image.Resampling.BICUBIC) for im in images]
                return module(_uint8(images).to(self.device).float() / 255.0)

        self.module.eval().requires_grad_(False)
        self._forward = forward

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, D)`` float32 features (images of different sizes are run in separate batches)."""
        self.prepare()
        assert self._forward is not None and self.module is not None
        self.module.to(self.device)
        out: list[np.ndarray | None] = [None] * len(images)
        for start in range(0, len(images), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(images))))
            for size in dict.fromkeys(images[i].size for i in chunk):
                idx = [i for i in chunk if images[i].size == size]
                feats = self._forward([images[i] for i in idx])
                if isinstance(feats, (tuple, list)):
                    feats = feats[0]
                feats = feats.reshape(len(idx), -1).float().cpu().numpy()
                for i, f in zip(idx, feats, strict=True):
                    out[i] = f
        return np.stack(out) if out else np.zeros((0, 0), np.float32)  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------- reference
    def _load_reference(self) -> None:
        if self._reference is not None or self.reference == "original":
            return
        path = Path(self.reference).expanduser()
        if path.suffix == ".npz":
            with np.load(path) as data:
                rows, feats = data["rows"], data["features"]
            self._reference = {int(r): f for r, f in zip(rows, feats, strict=True)}
            self._reference_info = {"reference": str(path), "reference_sha256": file_sha256(path)}
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) < 2:
                raise RECEError(f"FID reference folder {path} holds {len(files)} images; it needs at least 2")
            images = []
            for file in files:
                with Image.open(file) as im:
                    images.append(im.convert("RGB"))
            feats = self.features(images)
            # real images have no prompt row: negative keys keep them apart from generated rows
            self._reference = {-1 - i: f for i, f in enumerate(feats)}
            self._reference_info = {"reference": str(path), "reference_files": [p.name for p in files]}
        self._reference_info["reference_images"] = len(self._reference)

    def set_reference(self, rows: Sequence[int], features: np.ndarray, source: str = "original") -> None:
        """Use these features (one per prompt row) as the reference set."""
        self._reference = {int(r): np.asarray(f) for r, f in zip(rows, features, strict=True)}
        self._reference_info = {"reference": source, "reference_images": len(self._reference)}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.reference == "original" and self._reference is None and not trainer.sanity_checking:
            self._resume_reference(trainer)
        super().on_validation_epoch_start(trainer, pl_module)  # (after the reference: it is part of the cache key)

    def cache_state(self) -> dict[str, Any]:
        """The reference features' SHA-256 (each record's ``feature_distance`` is measured to them)."""
        self._load_reference()
        if self._reference is None:
            return {"reference_features": None}
        rows = sorted(self._reference)
        features = torch.from_numpy(np.stack([np.asarray(self._reference[r]) for r in rows]))
        return {"reference_features": tensor_sha256({"rows": torch.tensor(rows), "features": features})}

    def _resume_reference(self, trainer: L.Trainer) -> None:
        """A resumed ``rece fit`` (``--ckpt_path`` into its run folder) starts after the ``original`` stage: use the
        reference features that stage saved in the run folder."""
        path = run_dir(trainer) / "eval" / "original" / f"{self.name}_features.npz"
        if not path.is_file():
            return
        with np.load(path) as data:
            self.set_reference(data["rows"], data["features"], "original")
        self._reference_info["reference_file"] = str(path)

    # ---------------------------------------------------------------------------------- ImageMetric
    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._load_reference()
        feats = self.features(images)
        records = []
        for row, f in zip(rows, feats, strict=True):
            key = row.get("row")
            ref = None if self._reference is None or key is None else self._reference.get(int(key))
            distance = None if ref is None else float(np.linalg.norm(f.astype(np.float64) - ref))
            records.append({"feature_norm": float(np.linalg.norm(f.astype(np.float64))),
                            "feature_distance": distance, "_features": f})
        return records

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        if self._reference is None or self._skip_summary:
            return {}
        if len(records) < 2 or len(self._reference) < 2:
            warn(f"{self.name}: the Fréchet distance needs ≥ 2 images per set; not computed")
            return {}
        reference = np.stack([self._reference[k] for k in sorted(self._reference)])
        generated = np.stack([r["_features"] for r in records])
        return {self.name: frechet_distance(reference, generated)}

    def on_records(self, trainer: L.Trainer, records: list[dict[str, Any]], stage: str) -> None:
        if self.reference == "original" and stage == "original":
            # the unedited model's images become the reference of later stages (their own distance, 0, is not logged)
            rows = [int(r["row"]) for r in records]
            feats = np.stack([r["_features"] for r in records])
            self.set_reference(rows, feats, "original")
            self._skip_summary = True
            if trainer.is_global_zero and self.save_json:
                root = run_dir(trainer)
                with atomic_path(root / "eval" / stage / f"{self.name}_features.npz") as tmp, tmp.open("wb") as fh:
                    np.savez(fh, rows=np.asarray(rows, np.int64), features=feats)
            return
        self._skip_summary = False
        if self._reference is None:
            warn(f"{self.name}: no reference set (reference='original' needs the 'original' stage validated "
                 "first, e.g. model.validate_original=true in rece fit); give a folder of images or a .npz")

    def protocol(self) -> dict[str, Any]:
        extractor: dict[str, Any] = {"kind": self.kind}
        if self.kind == "inception":
            assert self.weights_path is not None
            extractor.update(
                name="torchmetrics NoTrainInceptionV3 (torch-fidelity inception-v3-compat)",
                feature=self.feature,
                weights_path=str(self.weights_path),
                weights_file=INCEPTION_WEIGHTS,
                weights_url=INCEPTION_URL,
                weights_sha256=file_sha256(self.weights_path),
                input="uint8 RGB, resized to 299 px (bilinear, antialias) inside the network",
            )
        elif self.kind == "testbed_classifier":
            extractor.update(name="rece_lightning.testbed AttributeClassifier.features (256-d trunk)",
                             note="not an Inception distance: compare only with the same extractor")
        else:
            assert self.module is not None
            extractor.update(name=f"{type(self.module).__module__}.{type(self.module).__qualname__}",
                             input="float RGB in [0, 1]", image_size=self.image_size)
        return {
            "metric": "Fréchet distance (Heusel et al., 2017) via torchmetrics FrechetInceptionDistance",
            "formula": "|mu_ref - mu_gen|^2 + Tr(S_ref + S_gen - 2 (S_ref S_gen)^1/2), float64, unbiased covariance",
            "extractor": extractor,
            **self._reference_info,
        }
