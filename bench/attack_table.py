"""Print the ASR table of `rece test` runs (one row per attacked model, one column per attack).

    python bench/attack_table.py original=runs/attack_testbed/lightning_logs/version_0 uce=... rece=...

Reads ``eval/test-<stage>/<metric>.json`` written by the metric callbacks in the test stage (``test/<attack>/asr``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def asr_of(run: Path, metric: str) -> dict[str, float]:
    (path,) = run.glob(f"eval/test-*/{metric}.json")
    summary = json.loads(path.read_text())["summary"]
    return {key.split("/")[1]: value for key, value in summary.items() if key.endswith("/asr")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=run folder (lightning_logs/version_N)")
    parser.add_argument("--metric", default="classifier", help="metric JSON name (classifier, nudenet …)")
    args = parser.parse_args()
    table = {label: asr_of(Path(folder), args.metric) for label, folder in (r.split("=", 1) for r in args.runs)}
    attacks = list(dict.fromkeys(a for row in table.values() for a in row))
    print("| model | " + " | ".join(attacks) + " |")
    print("|---" * (len(attacks) + 1) + "|")
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{100 * row[a]:.0f} %" if a in row else "–" for a in attacks) + " |")


if __name__ == "__main__":
    main()
