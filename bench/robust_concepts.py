"""Paper recipe vs robust recipe on any testbed concept (issue 21): run both, then print one table.

Each run is ``rece fit`` in a child process with only the concept and its validation prompts changed
(``--model.concepts '[C]' --data.val_prompts testbed:C``) on ``configs/testbed.yaml`` (paper) or
``configs/testbed_robust.yaml`` (robust, its ``auto`` settings found inside the run); the wall time and the child's
peak resident memory (``os.wait4``'s ``ru_maxrss``, the whole run: model, search, validation) are recorded in
``<out>/<concept>/<recipe>.json``. The table reads each run's ``eval/<stage>/classifier.json`` records and reports
both recipes' kept stages on the *report split* of the validation prompts (every other row of each kind sorted by
prompt, the rows the robust stopping rule never saw: :class:`rece_lightning.lightning.selection_split.SelectionSplit`),
so both are measured on the same, unselected prompts. The paper run keeps the stage with the lowest concept rate over all prompts (its
``keep_best``); the robust run the stage its stopping rule kept (both from ``kept_stage.json``).

    python bench/robust_concepts.py run --concepts star --recipes paper robust   # runs/concepts/star/…
    python bench/robust_concepts.py table --concepts star                        # the markdown table
    python bench/robust_concepts.py table --compact --concepts star              # the README's paper → robust table

Targets (issue 21): ≤ 5 % concept on every target kind, ≥ 98 % of neighbour and unrelated prompts kept.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from rece_lightning.lightning.callbacks.classifier import ClassifierAccuracy
from rece_lightning.lightning.selection_split import SelectionSplit
from rece_lightning.recipes.selection import read_kept_stage

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"paper": REPO / "configs" / "testbed.yaml", "robust": REPO / "configs" / "testbed_robust.yaml"}
KINDS = [("explicit", "concept_rate/explicit"), ("paraphrase", "concept_rate/paraphrase"),
         ("implicit", "concept_rate/implicit"), ("neighbour", "preservation/neighbour"),
         ("unrelated", "preservation/unrelated")]


def run(concept: str, recipe: str, out: Path, extra: list[str]) -> dict:
    """One ``rece fit`` in a child process; its folder, wall time and peak memory."""
    root = out / concept / recipe
    command = [sys.executable, "-m", "rece_lightning.lightning.cli", "fit", "--config", str(CONFIGS[recipe]),
               "--model.concepts", f"[{concept}]", "--data.val_prompts", f"testbed:{concept}",
               "--trainer.default_root_dir", str(root), *extra]
    log = root.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{recipe} run of {concept!r} failed; see {log}")
    folder = re.findall(r"rece: fit writes to (\S+)", text)[-1]
    result = {"concept": concept, "recipe": recipe, "folder": folder, "seconds": round(seconds, 1),
              "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "command": command}
    (out / concept / f"{recipe}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


def records(folder: Path, stage: str) -> list[dict]:
    return json.loads((folder / "eval" / stage / "classifier.json").read_text())["records"]


def kept_stage(folder: Path) -> str:
    """The stage the run kept (``kept_stage.json``: the paper run's keep-best, the robust run's stopping rule)."""
    record = read_kept_stage(folder)
    if record is None or record.get("stage") is None:
        raise SystemExit(f"{folder} names no kept stage (kept_stage.json)")
    return str(record["stage"])


def report_summary(folder: Path, stage: str) -> dict[str, float]:
    """The classifier summary of a stage on the report split."""
    rows = records(folder, stage)
    _, report = SelectionSplit.split(rows)
    return ClassifierAccuracy().summarize([r for r in rows if int(r["row"]) in report])


def kept_report(out: Path, concept: str, recipe: str) -> tuple[dict, str, dict[str, float]] | None:
    """A recorded run (``<out>/<concept>/<recipe>.json``), its kept stage and that stage's report-split summary;
    ``None`` when the run was not recorded."""
    path = out / concept / f"{recipe}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    folder = Path(result["folder"])
    stage = kept_stage(folder)
    return result, stage, report_summary(folder, stage)


def compact_table(concepts: list[str], out: Path) -> None:
    """The README's table: paper → robust on the report split, one row per concept, both runs' kept stages."""
    print("| concept | explicit | paraphrase | implicit | neighbours kept | unrelated kept | kept stages (paper, robust) |")
    print("|---" * 7 + "|")
    for concept in concepts:
        runs = {recipe: kept_report(out, concept, recipe) for recipe in ("paper", "robust")}
        if None in runs.values():
            raise SystemExit(f"{concept}: the compact table needs both runs (bench/robust_concepts.py run)")
        cells = []
        for _, key in KINDS:
            values = [summary.get(key) for _, _, summary in runs.values()]
            cells.append("–" if None in values else " → ".join(f"{100 * v:.0f}" for v in values) + " %")
        print(f"| {concept} | " + " | ".join(cells) + f" | {runs['paper'][1]}, {runs['robust'][1]} |")


def table(concepts: list[str], out: Path) -> None:
    print("| concept | recipe (kept stage) | explicit | paraphrase | implicit | neighbour kept | unrelated kept "
          "| targets met | wall time | peak memory |")
    print("|---" * 10 + "|")
    for concept in concepts:
        for recipe in ("paper", "robust"):
            recorded = kept_report(out, concept, recipe)
            if recorded is None:
                continue
            result, stage, summary = recorded
            cells, met = [], True
            for _, key in KINDS:
                value = summary.get(key)
                cells.append("–" if value is None else f"{100 * value:.0f} %")
                if value is not None:
                    met &= value <= 0.05 if key.startswith("concept") else value >= 0.98
            print(f"| {concept} | {recipe} ({stage}) | " + " | ".join(cells)
                  + f" | {'yes' if met else 'no'} | {result['seconds']:.0f} s | {result['peak_rss_gb']:.2f} GB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "table"])
    parser.add_argument("--concepts", nargs="+", default=["star"])
    parser.add_argument("--recipes", nargs="+", default=["paper", "robust"], choices=["paper", "robust"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "concepts")
    parser.add_argument("--compact", action="store_true", help="the README's table (paper → robust per concept)")
    parser.epilog = "further `rece fit` arguments go after --, e.g. -- --model.robust.judged_scale 10"
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if args.action == "run":
        for concept in args.concepts:
            for recipe in args.recipes:
                run(concept, recipe, args.out, extra)
    if args.compact:
        compact_table(args.concepts, args.out)
    else:
        table(args.concepts, args.out)


if __name__ == "__main__":
    main()
