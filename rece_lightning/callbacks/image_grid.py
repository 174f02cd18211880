"""Log a grid of the first validation images of every stage to TensorBoard (and as a PNG next to the run).

The grid is kept in the evaluation cache (:mod:`rece_lightning.eval_cache`) with the first rows it shows, so a stage
whose metrics are cached too needs no image generated."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image

from rece_lightning.callbacks.cached import CachedEvaluation
from rece_lightning.callbacks.run import run_dir
from rece_lightning.files import atomic_path


def make_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized RGB images row by row."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return grid


class ImageGridLogger(CachedEvaluation, L.Callback):
    """Collect the first ``max_images`` validation images and log them as one grid per stage.

    Args:
        max_images: images in the grid: the first rows of the validation prompts (gathered from every process
            under DDP), so every stage and every process count shows the same prompts and seeds.
        columns: grid width in images.
        save_png: also write ``<log_dir>/images/<stage>.png``.
    """

    def __init__(self, max_images: int = 16, columns: int = 8, save_png: bool = True) -> None:
        self.max_images, self.columns, self.save_png = max_images, columns, save_png
        self._images: list[tuple[int, Image.Image]] = []  # (prompt row, image), the lowest rows kept
        self._cached: Image.Image | None = None

    cache_kind = "grid"

    def cache_parts(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The first ``max_images`` rows and the grid's layout."""
        first = sorted(rows, key=lambda r: int(r["row"]))[: self.max_images]
        return {"rows": first, "grid": {"max_images": self.max_images, "columns": self.columns}}

    def cache_label(self) -> str:
        """``image grid``."""
        return "image grid"

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = []
        entry = self.cache_lookup(trainer, pl_module)
        self._cached = None if entry is None else Image.fromarray(entry[1]["grid"].numpy())

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._cached is None and isinstance(outputs, dict) and "images" in outputs:
            rows = outputs["rows"].get("row", range(len(outputs["images"])))
            self._images.extend(zip(rows, outputs["images"], strict=False))
            self._images = sorted(dict(self._images).items())[: self.max_images]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        grid, self._cached = self._cached, None
        if grid is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            shards: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shards, self._images)
            self._images = sorted(dict(pair for shard in shards for pair in shard).items())[: self.max_images]
        images = [image for _, image in self._images]
        if (grid is None and not images) or not trainer.is_global_zero:
            return
        root = run_dir(trainer)
        stage = getattr(pl_module, "stage", "model")
        if grid is None:
            grid = make_grid(images, min(self.columns, len(images)))
            self.cache_store(trainer, {"size": list(grid.size)}, {"grid": torch.from_numpy(np.asarray(grid).copy())})
        step = trainer.current_epoch if trainer.state.fn == "fit" else 0
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_image"):
            array = np.asarray(grid, dtype=np.uint8)
            logger.experiment.add_image(f"images/{stage}", array, global_step=step, dataformats="HWC")
        if self.save_png:
            with atomic_path(root / "images" / f"{stage}.png") as tmp:
                grid.save(tmp, format="PNG")
