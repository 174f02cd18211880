"""Print the measured table of a testbed run (original vs UCE vs RECE iterations) from its evaluation JSON files.

    python bench/testbed_table.py runs/testbed/lightning_logs/version_0

Reads ``eval/<stage>/classifier.json`` (and ``fd_testbed_classifier.json`` when present) written by the
``ClassifierAccuracy`` and ``FrechetDistance`` callbacks; every number comes from those files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [
    ("explicit", "val/concept_rate/explicit"),
    ("paraphrase", "val/concept_rate/paraphrase"),
    ("implicit", "val/concept_rate/implicit"),
    ("neighbour (preserved)", "val/preservation/neighbour"),
    ("unrelated (preserved)", "val/preservation/unrelated"),
    ("FD to original", "val/fd_testbed_classifier"),
]


def stage_order(name: str) -> tuple[int, int]:
    if name == "original":
        return (0, 0)
    if name == "uce":
        return (1, 0)
    return (2, int(name.split("-")[-1])) if name.startswith("rece-") else (3, 0)


def table(run: Path) -> str:
    stages = sorted((p.name for p in (run / "eval").iterdir() if (p / "classifier.json").is_file()), key=stage_order)
    lines = ["| stage | " + " | ".join(c for c, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for stage in stages:
        summary: dict[str, float] = {}
        for name in ("classifier.json", "fd_testbed_classifier.json"):
            path = run / "eval" / stage / name
            if path.is_file():
                summary.update(json.loads(path.read_text())["summary"])
        cells = []
        for _, key in COLUMNS:
            value = summary.get(key)
            cells.append("–" if value is None else (f"{value:.2f}" if "fd" in key else f"{100 * value:.0f} %"))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (lightning_logs/version_N)")
    print(table(parser.parse_args().run))


if __name__ == "__main__":
    main()
