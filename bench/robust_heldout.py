"""Held-out numbers of finished runs (issue 12): each run's exported K/V weights measured on the held-out prompts of
``bench/robust_search.py`` (new templates, synonyms and cue phrasings; only the rows that the original model gets
right are kept), beside the original model and the paper recipe's UCE stage computed in process. Any testbed concept:
the triangle and the striped pattern have hand-written held-out cues, the others their training cues in new contexts
(none for the square, green, blue and purple, which no cue implies).

    python bench/robust_heldout.py --concept triangle rece=runs/testbed/lightning_logs/version_0 \
        robust=runs/testbed_robust/lightning_logs/version_0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_search import KEYS, Harness  # noqa: E402

from rece_lightning.artefacts.export import load_kv_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("runs", nargs="*", help="name=run folder (lightning_logs/version_N) with export/kv_weights")
    args = parser.parse_args()
    h = Harness(args.concept)
    results = {"original": h.measure(h.heldout)}
    m = h.module
    m.run_stage(0, apply=True)  # stages: uce first (validate_original=False)
    results["uce"] = h.measure(h.heldout)
    h.reset()
    for item in args.runs:
        name, folder = item.split("=", 1)
        weights = load_kv_weights(Path(folder) / "export" / "kv_weights.safetensors")
        m.editor.set_base({p.key: weights[p.key] for p in m.editor.projections})
        results[name] = h.measure(h.heldout)
        m.editor.set_base(m.editor.original)
    counts = {k: sum(r["kind"] == k for r in h.heldout) for k in ("paraphrase", "implicit", "neighbour", "unrelated")}
    print(f"held-out rows ({args.concept}; kept where the original model is right): {counts}")
    print("| model | held-out paraphrase | held-out implicit | held-out neighbour (preserved) "
          "| held-out unrelated (preserved) |")
    print("|---|---|---|---|---|")
    for name, s in results.items():
        cells = [f"{100 * s[k]:.0f} %" if k in s else "–" for k in KEYS[1:]]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
