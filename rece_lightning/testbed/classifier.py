"""Attribute classifier of testbed images: the testbed's "NudeNet".

A small CNN with one softmax head per attribute (shape, colour, pattern,
background).  Weights ship as safetensors next to a tiny JSON config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from .world import ATTRIBUTES, IMAGE_SIZE

CLASSIFIER_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "classifier")
"""Folder of the shipped classifier (``config.json`` + ``model.safetensors``)."""


class AttributeClassifier(nn.Module):
    """CNN mapping (B, 3, 32, 32) images in [0, 1] to per-attribute logits.

    Args:
        attributes: attribute name -> ordered label names.
        width: channel width of the first stage.
    """

    def __init__(self, attributes: dict[str, Sequence[str]] | None = None, width: int = 16) -> None:
        super().__init__()
        self.attributes = {k: list(v) for k, v in (attributes or ATTRIBUTES).items()}
        self.width = width
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(
            block(3, w, 1),
            block(w, 2 * w, 2),  # 16x16
            block(2 * w, 4 * w, 1),
            block(4 * w, 4 * w, 2),  # 8x8
            block(4 * w, 8 * w, 2),  # 4x4
            nn.Flatten(),
            nn.Linear(8 * w * 16, 256),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in self.attributes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return a dict attribute -> logits (B, n_labels)."""
        h = self.features(images * 2.0 - 1.0)
        return {k: head(h) for k, head in self.heads.items()}

    def config(self) -> dict[str, object]:
        """JSON-serialisable constructor arguments."""
        return {"attributes": self.attributes, "width": self.width, "image_size": IMAGE_SIZE}


def load_testbed_classifier(folder: str | None = None, device: str | torch.device = "cpu") -> AttributeClassifier:
    """Load the shipped attribute classifier (eval mode, float32)."""
    folder = folder or CLASSIFIER_DIR
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    model = AttributeClassifier(cfg["attributes"], cfg["width"])
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return model.to(device).float().eval()


def images_to_tensor(images: Sequence[Image.Image] | Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """Convert PIL images, a (B,3,H,W)/(3,H,W) float tensor in [0,1] or a uint8 HWC array to (B,3,32,32)."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray):
        arr = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
        x = torch.from_numpy(arr if arr.ndim == 4 else arr[None]).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x[None]
    else:
        arrs = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            arrs.append(np.asarray(im, dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
        x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0).contiguous()


@torch.no_grad()
def classify(
    images: Sequence[Image.Image] | Image.Image | torch.Tensor | np.ndarray,
    model: AttributeClassifier | None = None,
    batch_size: int = 256,
) -> dict[str, object]:
    """Predict the attributes of images.

    Args:
        images: PIL image(s), or a float tensor (B,3,H,W) in [0,1].
        model: classifier; the shipped one is loaded (and cached) when ``None``.
        batch_size: inference batch size.

    Returns:
        For every attribute ``a``: ``result[a]`` is the list of predicted label
        names and ``result[a + "_prob"]`` a float tensor (B, n_labels) of softmax
        probabilities (columns ordered as ``model.attributes[a]``).
    """
    model = model or _cached_classifier()
    x = images_to_tensor(images)
    device = next(model.parameters()).device
    probs: dict[str, list[torch.Tensor]] = {k: [] for k in model.attributes}
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        for k, v in logits.items():
            probs[k].append(v.softmax(-1).cpu())
    out: dict[str, object] = {}
    for k, labels in model.attributes.items():
        p = torch.cat(probs[k])
        out[k] = [labels[j] for j in p.argmax(-1).tolist()]
        out[k + "_prob"] = p
    return out


_CACHE: dict[str, AttributeClassifier] = {}


def _cached_classifier() -> AttributeClassifier:
    if "default" not in _CACHE:
        _CACHE["default"] = load_testbed_classifier()
    return _CACHE["default"]
