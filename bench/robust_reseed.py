"""How precise are a robust run's rates? The kept edit on the same prompts with more seeds (issue 21).

A report half holds 18–24 rows of each kind, one image each, so one image is 4–6 points and the target (≤ 5 %
concept, ≥ 98 % kept) allows one image at most. This script measures a finished run's exported edit
(``<run>/export/kv_weights.safetensors``, the kept stage; loaded with the base model check) on the concept's shipped
prompts drawn with ``--seeds`` new seeds each (``evaluation_seed + 1000·k``, k = 1…K, none of them a shipped seed),
and the original model on the same rows. It prints, per kind, the original's and the edit's rate with the count and a
95 % Wilson interval, and the edit's rate among the rows whose original image is right (concept shown for the
target kinds, labels kept for the others), which is what the shipped prompts measure by construction.

    python bench/robust_reseed.py --run runs/concepts/triangle/robust.json --seeds 4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_search import Harness, as_prompted  # noqa: E402

from rece_lightning.artefacts.export import load_kv_into  # noqa: E402

KINDS = ("explicit", "paraphrase", "implicit", "neighbour", "unrelated")


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``hits`` successes in ``n`` trials."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a robust run's record from bench/robust_concepts.py")
    parser.add_argument("--seeds", type=int, default=4, help="new seeds per shipped prompt")
    args = parser.parse_args()
    record = json.loads(args.run.read_text())
    folder, concept = Path(record["folder"]), record["concept"]
    kept = json.loads((folder / "kept_stage.json").read_text())["stage"]
    harness = Harness(concept, heldout=False)
    module = harness.module
    rows = [{**row, "evaluation_seed": str(int(row["evaluation_seed"]) + 1000 * k)}
            for k in range(1, args.seeds + 1) for row in harness.shipped]
    start = time.perf_counter()

    def score() -> list[dict]:
        images = module.generate([r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows])
        return harness.metric.score(images, rows)

    harness.reset()
    original = score()
    load_kv_into(module.family.pipeline.unet, folder / "export" / "kv_weights.safetensors")
    edited = score()
    module.editor.restore_original()
    print(f"{concept}: kept stage {kept}, {len(harness.shipped)} prompts × {args.seeds} new seeds "
          f"({time.perf_counter() - start:.0f} s)")
    print("kind        rate    original           edit (95 % interval)        edit, rows the original gets right")
    for kind in KINDS:
        pairs = [(o, e) for o, e in zip(original, edited, strict=True) if o["kind"] == kind]
        if not pairs:
            continue
        n = len(pairs)
        o_hits, e_hits = sum(as_prompted(o) for o, _ in pairs), sum(as_prompted(e) for _, e in pairs)
        valid = [e for o, e in pairs if as_prompted(o)]
        v_hits = sum(as_prompted(e) for e in valid)
        name = "concept" if pairs[0][0]["role"] == "target" else "kept"  # what the rate counts
        low, high = wilson(e_hits, n)
        v_low, v_high = wilson(v_hits, len(valid))
        print(f"{kind:<11} {name:<8}{100 * o_hits / n:5.1f} % ({o_hits}/{n})   "
              f"{100 * e_hits / n:5.1f} % ({e_hits}/{n}, {100 * low:4.1f}–{100 * high:4.1f} %)   "
              f"{100 * v_hits / max(len(valid), 1):5.1f} % ({v_hits}/{len(valid)}, "
              f"{100 * v_low:4.1f}–{100 * v_high:4.1f} %)", flush=True)


if __name__ == "__main__":
    main()
