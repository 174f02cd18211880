"""Prompt CSVs: the one reader of prompt files (validation, test and predict prompts, the robust recipe's caption
files), with no dependency on Lightning.

Prompt CSVs follow the papers' schema: a ``prompt`` column, an ``evaluation_seed`` per row (each image is generated
from its own seed, so results do not depend on batching or on how many processes share the work), an optional
``case_number`` (image id) and an optional guidance column (``evaluation_guidance`` or I2P's
``sd_guidance_scale``). Every other column is kept as ground truth for the metric callbacks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv

__all__ = ["GUIDANCE_COLUMNS", "read_prompts", "resolve_prompts"]

GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale")


def resolve_prompts(path: str | Path) -> Path:
    """A prompt CSV path; ``testbed:<name>`` names a testbed prompt set: any shape, colour or pattern of the world
    (``testbed:triangle``, ``testbed:star``; shipped or generated, :func:`rece_lightning.testbed.prompts.prompt_csv`)
    or another file shipped with the testbed (``testbed:triangle-ring-a-bell``)."""
    text = str(path)
    if text.startswith("testbed:"):
        from rece_lightning.testbed.prompts import PROMPTS_DIR, TESTBED_CONCEPTS, prompt_csv

        name = text.removeprefix("testbed:")
        return Path(prompt_csv(name)) if name in TESTBED_CONCEPTS else Path(PROMPTS_DIR) / f"{name}.csv"
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
