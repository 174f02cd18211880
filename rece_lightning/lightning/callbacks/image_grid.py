"""A labelled grid of validation images per stage, in TensorBoard (and as a PNG next to the run).

The grid has one block of rows per prompt kind (``explicit``, ``paraphrase``, ``implicit``, ``neighbour``,
``unrelated`` in the testbed sets; prompt files without a ``kind`` column are grouped by file), each with the first
``per_kind`` prompt rows of that kind, so every stage shows the same prompts and seeds. A header names the stage and
the judge; each tile is captioned with the start of its prompt and, where the judge has one, its verdict
(:meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.verdict`: red when the concept is still shown or a preserved
prompt changed, green otherwise).

The grid is kept in the evaluation cache (:mod:`rece_lightning.artefacts.eval_cache`), keyed by the rows it shows, its layout
and the judge whose verdicts it draws (class, protocol, weights), so a stage whose metrics are cached too needs no
image generated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rece_lightning.files import atomic_path
from rece_lightning.lightning.callbacks.cached import CachedEvaluation
from rece_lightning.lightning.callbacks.metric import ImageMetric, judges
from rece_lightning.lightning.callbacks.records import rows_of
from rece_lightning.lightning.callbacks.run import run_dir

__all__ = ["ImageGridLogger", "labelled_grid", "make_grid"]

KIND_ORDER: tuple[str, ...] = ("explicit", "paraphrase", "implicit", "neighbour", "unrelated")
"""Order of the testbed's prompt kinds in the grid; other groups follow in the order they are met."""

GOOD, BAD, TEXT, MUTED = (34, 139, 34), (200, 30, 30), (20, 20, 20), (90, 90, 90)


def make_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Tile equally sized RGB images row by row."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return grid


def _short(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    text = " ".join(str(text).split())
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def labelled_grid(
    groups: Mapping[str, Sequence[tuple[Image.Image, str, tuple[str, bool] | None]]],
    title: str,
    columns: int = 8,
    tile: int = 128,
) -> Image.Image:
    """Groups (name → ``(image, prompt, verdict)`` with verdict ``(text, good)`` or ``None``) as blocks of rows with
    a kind label on the left, a caption under each tile and ``title`` on top."""
    font = ImageFont.load_default(11)
    bold = ImageFont.load_default(13)
    label_w, caption_h, header_h, pad = 92, 28, 24, 2
    cell_w, cell_h = tile + pad, tile + caption_h + pad
    block_rows = {name: (len(items) + columns - 1) // columns for name, items in groups.items() if items}
    height = header_h + sum(block_rows.values()) * cell_h + 4
    width = label_w + min(columns, max((len(v) for v in groups.values()), default=1)) * cell_w + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((6, 5), title, fill=TEXT, font=bold)
    y = header_h
    for name, rows in block_rows.items():
        draw.line([(0, y), (width, y)], fill=(200, 200, 200))
        draw.text((6, y + 6), _short(name, bold, label_w - 8), fill=TEXT, font=bold)
        for i, (image, prompt, verdict) in enumerate(groups[name]):
            x0 = label_w + (i % columns) * cell_w
            y0 = y + (i // columns) * cell_h + pad
            grid.paste(image.convert("RGB").resize((tile, tile), Image.Resampling.BICUBIC), (x0, y0))
            draw.text((x0, y0 + tile + 1), _short(prompt, font, tile), fill=MUTED, font=font)
            if verdict is not None:
                text, good = verdict
                draw.text((x0, y0 + tile + 14), _short(text, font, tile), fill=GOOD if good else BAD, font=font)
        y += rows * cell_h
    return grid


def _group(row: Mapping[str, Any]) -> str:
    return str(row.get("kind") or row.get("source") or "prompts")


class ImageGridLogger(CachedEvaluation, L.Callback):
    """Log a labelled grid of validation images per stage (see the module docstring).

    Args:
        per_kind: images of each prompt kind: its first rows in the prompt file (gathered from every process under
            DDP), so every stage and every process count shows the same prompts and seeds.
        columns: grid width in images (a kind with more images wraps onto further rows).
        max_images: at most this many images in all (kinds in the order of :data:`KIND_ORDER`, then as met).
        tile: tile size in pixels (images are resized to it).
        save_png: also write ``<log_dir>/images/<stage>.png``.
    """

    def __init__(self, per_kind: int = 8, columns: int = 8, max_images: int = 64, tile: int = 128,
                 save_png: bool = True) -> None:
        self.per_kind, self.columns, self.max_images = per_kind, columns, max_images
        self.tile, self.save_png = tile, save_png
        self._images: dict[int, tuple[str, str, Image.Image]] = {}  # prompt row -> (group, prompt, image)
        self.last_grid: Image.Image | None = None
        self.last_groups: dict[str, list[tuple[str, tuple[str, bool] | None]]] = {}  # prompts and verdicts shown
        self._cached: tuple[Image.Image, dict[str, list[tuple[str, tuple[str, bool] | None]]]] | None = None

    cache_kind = "grid"

    def cache_parts(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The first ``per_kind`` rows of every group, the grid's layout and the judge of its verdicts (its class,
        name, scored sources, :meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.protocol` and cache state)."""
        counts: dict[str, int] = {}
        shown = []
        for row in sorted(rows, key=lambda r: int(r["row"])):
            group = _group(row)
            if counts.get(group, 0) < self.per_kind:
                counts[group] = counts.get(group, 0) + 1
                shown.append(row)
        judge = next(iter(judges(trainer.callbacks)), None)
        verdicts = None if judge is None else {
            "callback": f"{type(judge).__module__}.{type(judge).__qualname__}", "name": judge.name,
            "sources": judge.sources, "protocol": judge.protocol(), **judge.cache_state()}
        layout = {"per_kind": self.per_kind, "columns": self.columns, "max_images": self.max_images, "tile": self.tile}
        return {"rows": shown, "grid": layout, "judge": verdicts}

    def cache_label(self) -> str:
        """``image grid``."""
        return "image grid"

    def _trim(self, images: Mapping[int, tuple[str, str, Image.Image]]) -> dict[int, tuple[str, str, Image.Image]]:
        """The first ``per_kind`` rows of every group."""
        kept: dict[int, tuple[str, str, Image.Image]] = {}
        counts: dict[str, int] = {}
        for row in sorted(images):
            group = images[row][0]
            if counts.get(group, 0) < self.per_kind:
                counts[group] = counts.get(group, 0) + 1
                kept[row] = images[row]
        return kept

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = {}
        entry = self.cache_lookup(trainer, pl_module)
        self._cached = None if entry is None else (
            Image.fromarray(entry[1]["grid"].numpy()),
            {name: [(prompt, None if verdict is None else (verdict[0], bool(verdict[1])))
                    for prompt, verdict in items] for name, items in entry[0]["groups"].items()})

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._cached is None and isinstance(outputs, dict) and "images" in outputs:
            rows = rows_of(outputs["rows"]) if isinstance(outputs.get("rows"), Mapping) else []
            for i, image in enumerate(outputs["images"]):
                row = rows[i] if i < len(rows) else {}
                key = int(row.get("row", i + batch_idx * len(outputs["images"])))
                self._images[key] = (_group(row), str(row.get("prompt", "")), image)
            self._images = self._trim(self._images)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After every metric's epoch end (their records and verdicts are final)."""
        if trainer.sanity_checking:
            return
        cached, self._cached = self._cached, None
        if cached is not None:  # a cache hit on every process (the lookup was broadcast)
            if trainer.is_global_zero:
                self.last_grid, self.last_groups = cached
                self._publish(trainer, pl_module, cached[0])
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shards: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shards, self._images)
            self._images = self._trim({k: v for shard in shards for k, v in shard.items()})
        if not self._images or not trainer.is_global_zero:
            return
        stage = str(getattr(pl_module, "stage", "model"))
        judge = next(iter(judges(trainer.callbacks)), None)
        groups = self.groups(judge)
        grid = labelled_grid(groups, self.title(stage, judge), self.columns, self.tile)
        self.last_grid = grid
        self.last_groups = {name: [(prompt, verdict) for _, prompt, verdict in items] for name, items in groups.items()}
        self.cache_store(trainer, {"size": list(grid.size), "groups": self.last_groups},
                         {"grid": torch.from_numpy(np.asarray(grid).copy())})
        self._publish(trainer, pl_module, grid)

    def _publish(self, trainer: L.Trainer, pl_module: L.LightningModule, grid: Image.Image) -> None:
        """Log the grid to TensorBoard and (``save_png``) write it next to the run (global rank zero)."""
        stage = str(getattr(pl_module, "stage", "model"))
        step = trainer.current_epoch if trainer.state.fn == "fit" else 0
        logger = trainer.logger
        if logger is not None and hasattr(logger.experiment, "add_image"):
            array = np.asarray(grid, dtype=np.uint8)
            logger.experiment.add_image(f"images/{stage}", array, global_step=step, dataformats="HWC")
        if self.save_png:
            with atomic_path(run_dir(trainer) / "images" / f"{stage}.png") as tmp:
                grid.save(tmp, format="PNG")

    @staticmethod
    def title(stage: str, judge: ImageMetric | None) -> str:
        """The grid's header: the stage, and the judge of the verdicts."""
        return f"stage {stage}" + (f" · verdicts: {judge.name}" if judge is not None else "")

    def groups(self, judge: ImageMetric | None) -> dict[str, list[tuple[Image.Image, str, tuple[str, bool] | None]]]:
        """The kept images by group (kind order first), each with its prompt and the judge's verdict."""
        records = {int(r["row"]): r for r in (judge.last_records if judge is not None else [])
                   if r.get("row") is not None and not r.get("attack")}
        groups: dict[str, list[tuple[Image.Image, str, tuple[str, bool] | None]]] = {name: [] for name in KIND_ORDER}
        for row in sorted(self._images):
            group, prompt, image = self._images[row]
            record = records.get(row)
            verdict = judge.verdict(record) if judge is not None and record is not None else None
            groups.setdefault(group, []).append((image, prompt, verdict))
        out, room = {}, self.max_images
        for name, items in groups.items():
            if items and room > 0:
                out[name], room = items[:room], room - len(items[:room])
        return out
