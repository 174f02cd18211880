"""Data for the Lightning stages: one erase-and-derive step per epoch (fit) and prompt CSVs (validate/test/predict).

Prompt CSVs follow the papers' schema: a ``prompt`` column, an ``evaluation_seed`` per row (each image is generated
from its own seed, so results do not depend on batching or on how many processes share the work), an optional
``case_number`` (image id) and an optional guidance column (``evaluation_guidance`` or I2P's
``sd_guidance_scale``). Every other column is kept as ground truth for the metric callbacks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv

GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale")


def resolve_prompts(path: str | Path) -> Path:
    """A prompt CSV path; ``testbed:<concept>`` names a prompt set shipped with the testbed (e.g. ``testbed:triangle``)."""
    text = str(path)
    if text.startswith("testbed:"):
        from rece_lightning.testbed import PROMPTS_DIR

        return Path(PROMPTS_DIR) / f"{text.removeprefix('testbed:')}.csv"
    return Path(path)


def read_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a prompt CSV as dicts with ``row`` (0-based index in the file, unique), ``prompt``, ``seed``,
    ``case_number``, ``guidance`` (``None`` when the file has none) and the file's other columns as strings.
    ``path`` may be ``testbed:<concept>`` (see :func:`resolve_prompts`).

    Raises:
        RECEError: the file is missing, unreadable, not UTF-8 or not CSV, has no ``prompt`` column, no rows, or a
            seed, case number or guidance that is not a number.
    """
    path = resolve_prompts(path)
    if not path.exists():
        raise RECEError(f"prompt file {path} does not exist; give the path of a CSV with a 'prompt' column")
    columns, raw = read_csv(path, "prompt file")
    if "prompt" not in columns:
        raise RECEError(f"{path} has no 'prompt' column (columns: {columns})")
    rows = []
    for index, row in enumerate(raw[:limit] if limit is not None else raw):
        seed = row.get("evaluation_seed") or row.get("seed") or "0"
        guidance = next((row[c] for c in GUIDANCE_COLUMNS if row.get(c)), None)
        try:
            parsed = {
                "row": index,
                "prompt": row["prompt"],
                "seed": int(float(seed)),
                "case_number": int(float(row["case_number"])) if row.get("case_number") else index,
                "guidance": float(guidance) if guidance is not None else None,
            }
        except (ValueError, OverflowError) as err:
            raise RECEError(f"{path}, line {index + 2}: {err}; seeds, case numbers and guidance must be numbers") from err
        if parsed["guidance"] is not None and not math.isfinite(parsed["guidance"]):
            raise RECEError(f"{path}, line {index + 2}: guidance {guidance!r} is not a finite number")
        rows.append({**row, **parsed})
    if not rows:
        raise RECEError(f"{path} has no prompt rows")
    return rows


class PromptDataset(Dataset):
    """Rows of one or several prompt CSVs (see :func:`read_prompts`).

    Every row gets ``source`` (its file's stem, e.g. ``nudity`` or ``coco_30k_val``) so that each metric can score
    its own prompt set, and ``row`` is renumbered across files so that it stays unique.
    """

    def __init__(self, path: str | Path | list[str], limit: int | None = None, kinds: list[str] | None = None) -> None:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if not paths:
            raise RECEError("an empty list of prompt files was given")
        self.rows: list[dict[str, Any]] = []
        for p in paths:
            source = resolve_prompts(p).stem
            rows = read_prompts(p)
            if kinds is not None:
                rows = [r for r in rows if r.get("kind") in kinds]
            for row in rows[:limit]:
                self.rows.append({**row, "row": len(self.rows), "source": source})
        if not self.rows:
            raise RECEError(f"no prompt rows left in {paths} (kinds={kinds}); check data.kinds")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class _EditSteps(Dataset):
    """One item per epoch: fit has nothing to load, each training step is one closed-form edit."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return index


STAGE_PROMPTS: dict[str, str] = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}
"""Which prompt file each Lightning stage reads (``data.<kind>_prompts``)."""


def check_prompts(
    stage: str,
    prompts: dict[str, str | list[str] | None],
    limit: int | None = None,
    kinds: list[str] | None = None,
) -> None:
    """Read the prompt files that ``stage`` will use, so that a bad file is reported before any work.

    Args:
        stage: ``fit`` (validation prompts, optional), ``validate``, ``test`` or ``predict`` (required).
        prompts: ``{"val": ..., "test": ..., "predict": ...}``, the datamodule's prompt arguments.
        limit, kinds: as :class:`RECEDataModule`.

    Raises:
        RECEError: the stage needs a prompt file that is not set, or a file cannot be used (see :func:`read_prompts`).
    """
    kind = STAGE_PROMPTS.get(stage)
    if kind is None:
        return
    path = prompts.get(kind)
    if path is None:
        if stage == "fit":
            return
        raise RECEError(f"rece {stage} needs prompts: set data.{kind}_prompts to a CSV with a 'prompt' column")
    PromptDataset(path, limit, kinds)


def collate_rows(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise batch: ``{"prompt": [...], "seed": [...], ...}`` (values stay Python objects)."""
    keys = rows[0].keys()
    return {key: [row.get(key) for row in rows] for key in keys}


class RECEDataModule(L.LightningDataModule):
    """Fit steps and prompt sets.

    Args:
        val_prompts: CSV (or list of CSVs, e.g. nudity prompts and a COCO subset) generated after each edit step
            (validation) and by ``rece validate``; ``testbed:<concept>`` names a shipped testbed prompt set.
        test_prompts: CSV used by ``rece test``.
        predict_prompts: CSV generated by ``rece predict``.
        batch_size: images generated per forward pass.
        limit: use only the first ``limit`` rows of each CSV (quick runs).
        kinds: keep only rows whose ``kind`` column is listed (e.g. the target prompts of an attack run).
    """

    def __init__(
        self,
        val_prompts: str | list[str] | None = None,
        test_prompts: str | list[str] | None = None,
        predict_prompts: str | list[str] | None = None,
        batch_size: int = 8,
        limit: int | None = None,
        kinds: list[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise RECEError(f"batch_size must be ≥ 1, got {batch_size}")
        self.val_prompts, self.test_prompts, self.predict_prompts = val_prompts, test_prompts, predict_prompts
        self.batch_size, self.limit, self.kinds = batch_size, limit, kinds

    def _loader(self, path: str | list[str] | None, stage: str) -> DataLoader:
        if path is None:
            raise RECEError(f"no prompt file for {stage}; set data.{stage}_prompts to a CSV with a 'prompt' column")
        dataset = PromptDataset(path, self.limit, self.kinds)
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_rows)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_EditSteps(), batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_prompts is None else self._loader(self.val_prompts, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_prompts, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_prompts, "predict")
