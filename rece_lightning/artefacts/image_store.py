"""Generated images on disk under stable names, so that an interrupted evaluation resumes where it stopped.

Images live in ``<root>/<stage>-<fingerprint>/<row>_<case_number>.png``. The fingerprint hashes everything an image
depends on besides its row — the base model, the edited K/V weights and the generation settings — so a folder is
only ever reused for exactly the same model state, and a changed edit never picks up stale images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from rece_lightning.files import atomic_path, tensor_sha256


def fingerprint(weights: Mapping[str, Tensor], settings: Mapping[str, Any]) -> str:
    """The first 12 hex digits of :func:`~rece_lightning.files.tensor_sha256` of the K/V weights, bound to the JSON
    of ``settings``."""
    return tensor_sha256(weights, json.dumps(dict(settings), sort_keys=True, default=str))[:12]


class ImageStore:
    """One folder of images for one model state (see module docstring)."""

    def __init__(self, root: str | Path, stage: str, key: str) -> None:
        self.folder = Path(root) / f"{stage}-{key}"

    def path(self, row: int, case_number: int) -> Path:
        """Where the image of prompt row ``row`` (with its ``case_number``) is kept."""
        return self.folder / f"{int(row):06d}_{int(case_number)}.png"

    def load(self, row: int, case_number: int) -> Image.Image | None:
        """The stored image of a row, or ``None`` when it was not generated yet."""
        path = self.path(row, case_number)
        if not path.is_file():
            return None
        with Image.open(path) as image:
            return image.convert("RGB")

    def save(self, image: Image.Image, row: int, case_number: int) -> Path:
        """Store a row's image (atomically) and return its path."""
        path = self.path(row, case_number)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        return path
