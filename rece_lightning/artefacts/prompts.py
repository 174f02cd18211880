"""Prompt CSVs: the one reader of prompt files (validation, test and predict prompts, the robust recipe's caption
files), with no dependency on Lightning.

Prompt CSVs follow the papers' schema: a ``prompt`` column, an ``evaluation_seed`` per row (each image is generated
from its own seed, so results do not depend on batching or on how many processes share the work), an optional
``case_number`` (image id) and an optional guidance column (``evaluation_guidance`` or I2P's
``sd_guidance_scale``). Every other column is kept as ground truth for the metric callbacks.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv

__all__ = ["GUIDANCE_COLUMNS", "MAX_SEED", "SEED_COLUMNS", "read_prompts", "resolve_prompts"]

GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale")


def resolve_prompts(path: str | Path) -> Path:
    """A prompt CSV path; ``testbed:<name>`` names a testbed prompt set: any shape, colour or pattern of the world
    (``testbed:triangle``, ``testbed:star``; shipped or generated, :func:`rece_lightning.testbed.prompts.prompt_csv`)
    the Ring-A-Bell pairs of any of them (``testbed:star-ring-a-bell``, :func:`rece_lightning.testbed.ring_a_bell.pairs_csv`)
    or another file shipped with the testbed."""
    text = str(path)
    if text.startswith("testbed:"):
        from rece_lightning.testbed.prompts import PROMPTS_DIR, TESTBED_CONCEPTS, prompt_csv
        from rece_lightning.testbed.ring_a_bell import pairs_csv

        name = text.removeprefix("testbed:")
        if name in TESTBED_CONCEPTS:
            return Path(prompt_csv(name))
        if name.endswith("-ring-a-bell") and name.removesuffix("-ring-a-bell") in TESTBED_CONCEPTS:
            return Path(pairs_csv(name.removesuffix("-ring-a-bell")))
        shipped = Path(PROMPTS_DIR) / f"{name}.csv"
        if not shipped.is_file():
            raise RECEError(f"{text!r} names no testbed prompt set; use testbed:<value> with a shape, colour or "
                            f"pattern of the testbed world ({', '.join(TESTBED_CONCEPTS)}), or "
                            "testbed:<value>-ring-a-bell for its Ring-A-Bell pairs")
        return shipped
    return Path(path)


SEED_COLUMNS = ("evaluation_seed", "seed")
"""The columns a prompt CSV may hold its per-row seeds in (the first present is used)."""

MAX_SEED = 2**64
"""Seeds are integers in ``[0, 2**64)`` (what :class:`torch.Generator` accepts)."""


def _integer(text: str, what: str, where: str, low: int, high: int | None) -> int:
    """``text`` as an integer in ``[low, high)``: ``7`` or ``7.0`` (a spreadsheet's float), never ``1.5``."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value != value.to_integral_value():
        raise RECEError(f"{where}: {what} {text!r} is not an integer; {what}s must be whole numbers")
    number = int(value)
    if number < low or (high is not None and number >= high):
        bound = f"in [{low}, 2**64)" if high == MAX_SEED else f"≥ {low}"
        raise RECEError(f"{where}: {what} {text!r} is out of range; {what}s must be integers {bound}")
    return number


def read_prompts(path: str | Path, limit: int | None = None, seeds: bool = True) -> list[dict[str, Any]]:
    """Rows of a prompt CSV as dicts with ``row`` (0-based index in the file, unique), ``prompt``, ``seed``,
    ``case_number``, ``guidance`` (``None`` when the file has none) and the file's other columns as strings.
    ``path`` may be ``testbed:<concept>`` (see :func:`resolve_prompts`).

    Every generated image comes from its row's own seed, so a prompt file must have a seed column
    (``evaluation_seed`` or ``seed``) with an integer in ``[0, 2**64)`` on every row: a file without one is refused
    rather than given a guessed seed. ``seeds=False`` (caption files whose prompts are only encoded, e.g. the robust
    recipe's) makes the column optional (``seed`` is then ``None`` where absent).

    Raises:
        RECEError: the file cannot be read as CSV (see :func:`~rece_lightning.files.read_csv`), has no ``prompt`` or
            seed column, no rows, an empty seed, a seed or case number that is not an integer in range, or a
            guidance that is not a finite number.
    """
    path = resolve_prompts(path)
    columns, raw = read_csv(path, "prompt file")
    if "prompt" not in columns:
        raise RECEError(f"{path} has no 'prompt' column (columns: {columns})")
    seed_column = next((c for c in SEED_COLUMNS if c in columns), None)
    if seed_column is None and seeds:
        raise RECEError(f"{path} has no seed column: add 'evaluation_seed' with one integer per row (e.g. 0, 1, 2 …); "
                        "every image is generated from its row's own seed")
    rows = []
    for index, row in enumerate(raw[:limit] if limit is not None else raw):
        where = f"{path}, line {index + 2}"
        if seed_column is not None and not row[seed_column].strip():
            raise RECEError(f"{where}: no {seed_column}; give every row a seed")
        guidance = next((row[c] for c in GUIDANCE_COLUMNS if row.get(c)), None)
        try:
            parsed_guidance = float(guidance) if guidance is not None else None
        except ValueError as err:
            raise RECEError(f"{where}: guidance {guidance!r} is not a number") from err
        if parsed_guidance is not None and not math.isfinite(parsed_guidance):
            raise RECEError(f"{where}: guidance {guidance!r} is not a finite number")
        parsed = {
            "row": index,
            "prompt": row["prompt"],
            "seed": _integer(row[seed_column], "seed", where, 0, MAX_SEED) if seed_column is not None else None,
            "case_number": _integer(row["case_number"], "case number", where, 0, None) if row.get("case_number")
            else index,
            "guidance": parsed_guidance,
        }
        rows.append({**row, **parsed})
    if not rows:
        raise RECEError(f"{path} has no prompt rows")
    return rows
