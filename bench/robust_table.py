"""Print the README table of one concept (issue 12): original / UCE / RECE (paper) / robust, from two finished runs.

    python bench/robust_table.py runs/testbed/lightning_logs/version_0 runs/testbed_robust/lightning_logs/version_0 \
        --paper-time 141 --robust-time 150

Every number comes from the runs' ``eval/<stage>/classifier.json`` and ``fd_testbed_classifier.json``. The RECE row is
the paper run's kept stage (``keep_best: val/concept_rate``: lowest concept rate, earlier on ties); the robust row
is the robust run's kept stage, re-derived with the recipe's own :class:`~rece_lightning.robust.StoppingRule`. Wall
times (``time rece fit …``) are passed in, as they are measured outside the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rece_lightning.robust import StoppingRule

COLUMNS = [("explicit", "val/concept_rate/explicit"), ("paraphrase", "val/concept_rate/paraphrase"),
           ("implicit", "val/concept_rate/implicit"), ("neighbour (preserved)", "val/preservation/neighbour"),
           ("unrelated (preserved)", "val/preservation/unrelated"), ("FD to original", "val/fd_testbed_classifier")]


def summaries(run: Path) -> dict[str, dict[str, float]]:
    out = {}
    for stage in (run / "eval").iterdir():
        summary: dict[str, float] = {}
        for name in ("classifier.json", "fd_testbed_classifier.json"):
            if (stage / name).is_file():
                summary.update(json.loads((stage / name).read_text())["summary"])
        out[stage.name] = summary
    return out


def order(stage: str) -> int:
    return {"original": 0, "uce": 1}.get(stage, 2 + int(stage.split("-")[-1]) if "-" in stage else 99)


def paper_kept(s: dict[str, dict[str, float]]) -> str:
    edited = sorted((k for k in s if k != "original"), key=order)
    return min(edited, key=lambda k: (s[k]["val/concept_rate"], order(k)))


def robust_kept(s: dict[str, dict[str, float]], run: Path) -> tuple[str, list]:
    """The kept stage under the run's own stopping rule (its ``hparams.yaml``)."""
    import yaml

    settings = yaml.safe_load((run / "hparams.yaml").read_text()).get("robust") or {}
    rule = StoppingRule(target=settings.get("stop_concept_rate", 0.0),
                        max_drop=settings.get("stop_preservation_drop", 0.02))
    stages = sorted(s, key=order)
    for i, k in enumerate(stages):
        if rule.update(i, s[k].get("val/concept_rate"), s[k].get("val/preservation"), candidate=k != "original"):
            break
    return stages[rule.keep], [(stages[i], c, p) for i, c, p in rule.history]


def row(name: str, summary: dict[str, float], seconds: str) -> str:
    cells = []
    for _, key in COLUMNS:
        v = summary.get(key)
        cells.append("–" if v is None else (f"{v:.2f}" if "fd" in key else f"{100 * v:.0f} %"))
    return f"| {name} | " + " | ".join(cells) + f" | {seconds} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper", type=Path)
    parser.add_argument("robust", type=Path)
    parser.add_argument("--paper-time", default="–")
    parser.add_argument("--robust-time", default="–")
    args = parser.parse_args()
    paper, robust = summaries(args.paper), summaries(args.robust)
    rece = paper_kept(paper)
    kept, history = robust_kept(robust, args.robust)
    print("| model | " + " | ".join(c for c, _ in COLUMNS) + " | wall time of the run |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    print(row("original", paper["original"], "–"))
    print(row("UCE (paper, stage uce)", paper["uce"], "–"))
    print(row(f"RECE (paper, kept {rece})", paper[rece], f"{args.paper_time} s"))
    print(row(f"robust (kept {kept})", robust[kept], f"{args.robust_time} s"))
    print()
    print("robust run, every stage (stage, concept rate, preservation):",
          ", ".join(f"{k} {100 * c:.1f} % / {100 * p:.1f} %" for k, c, p in history))


if __name__ == "__main__":
    main()
