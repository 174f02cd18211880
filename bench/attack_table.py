"""Print the ASR table of `rece test` runs (one row per attacked model, one column per attack).

    python bench/attack_table.py --logs runs/attack_testbed/lightning_logs \\
        original=test-original uce='test-*-stage-epoch=1' rece='test-*-best-epoch=*'

Each ``label=RUN`` names a run folder of ``rece test``: a path, or a folder name or glob pattern looked up in
``--logs`` (``rece test`` names its folders ``test-<what was attacked>``, e.g. ``test-original`` or
``test-version_0-best-epoch=4``); when a pattern matches several folders the newest is used. The folder used for
each label is printed to stderr. Reads ``eval/test-<stage>/<metric>.json`` written by the metric callbacks in the
test stage (``test/<attack>/asr``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def resolve_run(spec: str, logs: Path | None) -> Path:
    """The run folder that ``spec`` names: an existing path, else the newest folder of ``logs`` matching it."""
    path = Path(spec)
    if path.is_dir():
        return path
    if logs is None:
        raise SystemExit(f"attack_table: {spec} is not a folder; give --logs to look it up by name")
    matches = [p for p in logs.glob(spec) if p.is_dir()]
    if not matches:
        raise SystemExit(f"attack_table: no run folder in {logs} matches {spec!r}")
    return max(matches, key=lambda p: p.stat().st_mtime)


def asr_of(run: Path, metric: str) -> dict[str, float]:
    """``{attack: ASR}`` of one ``rece test`` run folder."""
    found = sorted(run.glob(f"eval/test-*/{metric}.json"))
    if len(found) != 1:
        raise SystemExit(f"attack_table: expected one eval/test-*/{metric}.json in {run}, found {len(found)}")
    summary = json.loads(found[0].read_text())["summary"]
    return {key.split("/")[1]: value for key, value in summary.items() if key.endswith("/asr")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=run folder, or label=name/pattern inside --logs")
    parser.add_argument("--logs", type=Path, default=None, help="lightning_logs folder to look names up in")
    parser.add_argument("--metric", default="classifier", help="metric JSON name (classifier, nudenet …)")
    args = parser.parse_args()
    table = {}
    for label, spec in (r.split("=", 1) for r in args.runs):
        run = resolve_run(spec, args.logs)
        print(f"{label}: {run}", file=sys.stderr)
        table[label] = asr_of(run, args.metric)
    attacks = list(dict.fromkeys(a for row in table.values() for a in row))
    print("| model | " + " | ".join(attacks) + " |")
    print("|---" * (len(attacks) + 1) + "|")
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{100 * row[a]:.0f} %" if a in row else "–" for a in attacks) + " |")


if __name__ == "__main__":
    main()
