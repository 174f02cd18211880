"""CLIP score (Hessel et al., EMNLP 2021) of validation images against their prompts.

The number is torchmetrics' ``CLIPScore``: per image ``100 · cos(E_img, E_text)`` of the L2-normalised projected
CLIP embeddings, and for a set ``max(mean, 0)``. torchmetrics only accepts hub names (which need a download) or a
callable, and torchmetrics 1.9 cannot read the outputs of ``get_image_features`` in transformers ≥ 5 (they return a
``BaseModelOutputWithPooling``), so this callback loads ``CLIPModel``/``CLIPProcessor`` itself and
computes the same quantity the same way: the processor's image preprocessing, captions tokenised with padding and cut
to the text model's ``max_position_embeddings`` tokens as torchmetrics does (``truncated`` is recorded per image). The
test suite checks the result against ``torchmetrics.multimodal.CLIPScore``.

The model is a Hugging Face Hub id or a local folder (:mod:`rece_lightning.models.source`). The default is the model
papers report the CLIP score of (on COCO-30k prompts), :data:`DEFAULT_CLIP_MODEL`: taken from the user's Hugging Face
cache, downloaded there when online (only its configs, processor files and safetensors weights); with
``HF_HUB_OFFLINE=1`` a model missing from the cache is one error line that names ``hf download …``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import Tensor

from rece_lightning.errors import RECEError
from rece_lightning.files import file_sha256
from rece_lightning.lightning.callbacks.metric import ImageMetric
from rece_lightning.lightning.callbacks.records import mean
from rece_lightning.models.source import ModelSource, resolve

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
"""The CLIP model of the papers' CLIP scores (ViT-L/14, as in RECE, UCE, ESD)."""


def _features(output: Any) -> Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor in transformers 4, a model output in 5)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise RECEError(f"cannot read CLIP features from {type(output).__name__}")
    return pooled


def check_local_model(path: str | Path, what: str, files: tuple[str, ...] = ("config.json",)) -> Path:
    """``path`` as an existing local model folder holding ``files``, or a :class:`RECEError` naming the fix."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RECEError(f"{what} folder {folder} does not exist; give a folder written by save_pretrained or a "
                        f"Hugging Face Hub id (e.g. {DEFAULT_CLIP_MODEL})")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RECEError(f"{what} folder {folder} has no {', '.join(missing)}; give a folder written by save_pretrained")
    return folder.resolve()


class CLIPScoreMetric(ImageMetric):
    """CLIP score of each image against its prompt (torchmetrics' ``CLIPScore``; see the module docstring).

    Logged: ``<prefix>/clip_score`` = ``max(mean_i 100·cos_i, 0)``; every record holds its own ``clip_score``.

    Args:
        model_name_or_path: a Hugging Face Hub id (``org/name`` or ``org/name@revision``; default
            :data:`DEFAULT_CLIP_MODEL`) or a local folder with a ``CLIPModel`` and its ``CLIPProcessor``
            (``save_pretrained`` output); its folder, Hub id and commit, and the weights' SHA-256 are recorded with
            the score.
        text_column: prompt-row column compared with the image (``prompt``; e.g. a caption column for COCO).
        batch_size: images per CLIP forward pass.
        name, prefix, save_json: see :class:`~rece_lightning.lightning.callbacks.metric.ImageMetric`.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_CLIP_MODEL,
        text_column: str = "prompt",
        batch_size: int = 32,
        name: str = "clip_score",
        prefix: str = "val",
        save_json: bool = True,
        sources: list[str] | None = None,
    ) -> None:
        super().__init__(name, prefix, save_json, sources)
        self.source = self.check_sources({"model_name_or_path": model_name_or_path})
        assert self.source.folder is not None
        self.folder = self.source.folder
        if batch_size < 1:
            raise RECEError(f"batch_size must be ≥ 1, got {batch_size}")
        self.text_column, self.batch_size = text_column, batch_size
        self.model: Any = None
        self.processor: Any = None
        self._sha: str | None = None

    @classmethod
    def check_sources(cls, init_args: dict[str, Any]) -> ModelSource:
        """The CLIP model of these arguments, resolved (called by the ``rece`` command before anything loads).

        Raises:
            RECEError: a Hub id missing from the cache offline (or not on the Hub), or the testbed.
        """
        spec = str(init_args.get("model_name_or_path") or DEFAULT_CLIP_MODEL)
        source = resolve(spec, "CLIPScoreMetric model_name_or_path", kind="transformers")
        if source.folder is None:
            raise RECEError(f"CLIPScoreMetric model_name_or_path {spec!r} is not a CLIP model; give a Hugging Face "
                            f"Hub id (e.g. {DEFAULT_CLIP_MODEL}) or a local folder")
        return replace(source, folder=check_local_model(source.folder, "CLIP model"))

    def prepare(self, pl_module: L.LightningModule | None = None) -> None:
        if self.model is None:
            from transformers import CLIPModel, CLIPProcessor

            try:
                self.model = CLIPModel.from_pretrained(self.folder, local_files_only=True).eval()
                self.processor = CLIPProcessor.from_pretrained(self.folder, local_files_only=True)
            except (OSError, ValueError) as err:
                raise RECEError(f"cannot load a CLIPModel and CLIPProcessor from {self.folder}: {err}") from err
            self.model.requires_grad_(False)

    @torch.no_grad()
    def clip_scores(self, images: list[Image.Image], texts: list[str]) -> tuple[list[float], list[bool]]:
        """Per image ``100 · cos`` with its text, and whether the text was cut to the model's context length."""
        self.prepare()
        model = self.model.to(self.device)
        limit = int(model.config.text_config.max_position_embeddings)
        scores: list[float] = []
        truncated: list[bool] = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            txt = texts[start:start + self.batch_size]
            pixels = self.processor(images=ims, return_tensors="pt")["pixel_values"].to(self.device)
            tokens = self.processor(text=txt, return_tensors="pt", padding=True)
            lengths = tokens["attention_mask"].sum(-1)
            ids, mask = tokens["input_ids"][..., :limit], tokens["attention_mask"][..., :limit]
            img = _features(model.get_image_features(pixel_values=pixels)).float()
            txt_f = _features(model.get_text_features(input_ids=ids.to(self.device),
                                                      attention_mask=mask.to(self.device))).float()
            img = img / img.norm(p=2, dim=-1, keepdim=True)
            txt_f = txt_f / txt_f.norm(p=2, dim=-1, keepdim=True)
            scores += (100 * (img * txt_f).sum(-1)).cpu().tolist()
            truncated += (lengths > limit).tolist()
        return scores, truncated

    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            texts = [str(row[self.text_column]) for row in rows]
        except KeyError as err:
            raise RECEError(f"CLIP score: prompt rows have no column {self.text_column!r} (text_column)") from err
        scores, truncated = self.clip_scores(images, texts)
        return [{"clip_score": s, "truncated": t} for s, t in zip(scores, truncated, strict=True)]

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"clip_score": max(mean([r["clip_score"] for r in records]), 0.0)}

    def protocol(self) -> dict[str, Any]:
        config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        weights = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        if self._sha is None and weights:
            self._sha = file_sha256(weights[0]) if len(weights) == 1 else ",".join(file_sha256(w) for w in weights)
        return {
            "metric": "CLIP score (Hessel et al., 2021) as torchmetrics.multimodal.CLIPScore",
            "formula": "per image 100*cos(image_embeds, text_embeds); set: max(mean, 0)",
            "model_name_or_path": str(self.folder),
            "model_id": self.source.repo_id or config.get("_name_or_path") or None,
            "model_revision": self.source.revision,
            "model_commit": self.source.commit,
            "model_type": config.get("model_type"),
            "weights_sha256": self._sha,
            "text_column": self.text_column,
            "text_truncation": "first max_position_embeddings tokens (as torchmetrics)",
            "max_text_tokens": (config.get("text_config") or {}).get("max_position_embeddings", 77),
        }
