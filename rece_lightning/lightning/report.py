"""``rece report RUN [RUN …]``: one table for any run folder — stages × metrics, attack success rates when present.

A run folder is what ``rece fit/validate/test`` wrote (``<root>/lightning_logs/<run>``). The numbers come from the
run's evaluation records (``eval/<stage>/<metric>.json``, the ``summary`` each metric callback wrote; ``rece test``
writes ``eval/test-<stage>/`` with ``test/<attack>/asr``), or, for a run without records, from its TensorBoard
scalars (the stage of each logged step is read from ``rece/stage`` and the run's stage list,
:func:`rece_lightning.recipes.paper.stage_names`). The stage the run kept (``kept_stage.json``,
:mod:`rece_lightning.recipes.selection`) is marked, and the reason is printed below the table. Nothing is re-derived.

    rece report runs/testbed/lightning_logs/version_0
    rece report runs/testbed/lightning_logs/version_0 --metrics 'val/concept_rate/*' 'val/preservation/*'
    rece report runs/attack_testbed/lightning_logs/test-*          # several runs: one row per run and stage

Rates (metric names with ``rate``, ``preservation``, ``asr`` or ``accuracy``) are shown in percent, other values
with 4 significant digits; ``–`` marks a metric a stage did not log.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from rece_lightning.errors import RECEError
from rece_lightning.recipes.selection import read_kept_stage

__all__ = ["format_value", "main", "run_metrics", "stage_order", "table"]

RATE_WORDS = ("rate", "preservation", "asr", "accuracy")


def stage_order(name: str) -> tuple[int, int, int, str]:
    """Sort key of stage folders: ``original``, ``uce``, ``rece-1``, ``rece-2`` …, then the ``test-`` ones."""
    stage = name.removeprefix("test-")
    number = re.fullmatch(r"rece-(\d+)", stage)
    rank = 0 if stage == "original" else 1 if stage == "uce" else 2 if number else 3
    return (int(name.startswith("test-")), rank, int(number.group(1)) if number else 0, name)


def _eval_metrics(run: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for path in sorted((run / "eval").glob("*/*.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8")).get("summary") or {}
        except (OSError, ValueError) as err:
            raise RECEError(f"{path} cannot be read as an evaluation record ({err}); was the run interrupted?") from err
        values = {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
        out.setdefault(path.parent.name, {}).update(values)
    return out


def _tensorboard_metrics(run: Path) -> dict[str, dict[str, float]]:
    """Scalars of the run's TensorBoard files by stage (the step's ``rece/stage`` index into the run's stages)."""
    events = sorted(run.glob("events.out.tfevents.*"))
    if not events:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stages = _stages_of(run)
    by_step: dict[int, dict[str, float]] = {}
    for path in events:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                by_step.setdefault(event.step, {})[tag] = event.value
    out: dict[str, dict[str, float]] = {}
    for _, scalars in sorted(by_step.items()):
        index = scalars.get("rece/stage")
        if index is None:
            continue
        index = int(index)
        name = stages[index] if stages is not None and index < len(stages) else f"stage {index}"
        out.setdefault(name, {}).update({k: v for k, v in scalars.items() if k not in ("rece/stage", "epoch")})
    return out


def _stages_of(run: Path) -> list[str] | None:
    """The run's stage list: from ``kept_stage.json``, else recomputed from ``hparams.yaml``."""
    kept = read_kept_stage(run)
    if kept and kept.get("stages"):
        return list(kept["stages"])
    hparams = run / "hparams.yaml"
    if not hparams.is_file():
        return None
    import yaml

    from rece_lightning.recipes.paper import ORIGINAL, stage_names

    h = yaml.safe_load(hparams.read_text(encoding="utf-8")) or {}
    stages = stage_names(h.get("recipe", "paper"), (h.get("rece") or {}).get("iterations", 1),
                         (h.get("robust") or {}).get("iterations", 6))
    return ([ORIGINAL] if h.get("validate_original", True) else []) + stages


def run_metrics(run: str | Path) -> dict[str, dict[str, float]]:
    """``{stage: {metric: value}}`` of a run folder (evaluation records, else TensorBoard scalars), stages in order.

    Raises:
        RECEError: ``run`` is not a folder, or holds neither evaluation records nor TensorBoard scalars of stages.
    """
    path = Path(run).expanduser()
    if not path.is_dir():
        raise RECEError(f"run folder {path} does not exist; give a folder like runs/testbed/lightning_logs/version_0")
    metrics = _eval_metrics(path) or _tensorboard_metrics(path)
    if not metrics:
        raise RECEError(f"{path} holds no evaluation records (eval/) and no TensorBoard scalars of stages; give the "
                        "folder of a run that validated or tested something (lightning_logs/<run>)")
    return {stage: metrics[stage] for stage in sorted(metrics, key=stage_order)}


def format_value(metric: str, value: float | None) -> str:
    """A table cell: rates in percent, other values with 4 significant digits, ``–`` when missing."""
    if value is None or not math.isfinite(value):
        return "–"
    if any(word in metric for word in RATE_WORDS) and 0.0 <= value <= 1.0:
        return f"{100 * value:.0f} %"
    return f"{value:.4g}"


def table(runs: Sequence[str | Path], patterns: Sequence[str] = ()) -> str:
    """The markdown table of ``runs`` (rows: run and stage; columns: the metrics matching ``patterns``, all when
    empty), the kept stage marked, each run's reason for it below."""
    rows: list[tuple[str, Mapping[str, float]]] = []
    notes: list[str] = []
    for run in runs:
        path = Path(run)
        kept = read_kept_stage(path)
        label = f"{path.name}: " if len(runs) > 1 else ""
        for stage, values in run_metrics(path).items():
            mark = " (kept)" if kept and kept.get("stage") == stage else ""
            rows.append((f"{label}{stage}{mark}", values))
        if kept:
            notes.append(f"{label}kept {kept.get('stage')}: {kept.get('reason')}")
    columns = list(dict.fromkeys(k for _, values in rows for k in values))
    if patterns:
        columns = [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
        if not columns:
            raise RECEError(f"no metric matches {list(patterns)}; the runs logged "
                            f"{sorted({k for _, v in rows for k in v})}")
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(format_value(c, values.get(c)) for c in columns) + " |"
              for name, values in rows]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: Sequence[str] | None = None) -> None:
    """``rece report RUN [RUN …] [--metrics PATTERN …]``: print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="rece report", description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (lightning_logs/<run>)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="PATTERN",
                        help="metric names or glob patterns to show (default: every logged metric)")
    args = parser.parse_args(argv)
    print(table(args.runs, args.metrics))
