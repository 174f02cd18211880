"""Measure the quality of the shipped testbed model with the shipped classifier.

Prints:
  * classifier accuracy per attribute on fresh renders (bar: >= 98 %),
  * for every concept CSV and prompt kind, how often generated images show the
    prompted shape / colour / pattern and the concept itself,
  * the quality bars (held-out paraphrases: shape and colour >= 90 %;
    implicit prompts: concept >= 80 %),
  * the time to generate 64 images on this machine.

Usage::

    python bench/testbed_quality.py [--steps 20] [--guidance 5] [--limit N] [--grid out.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from rece_lightning.testbed import (
    ATTRIBUTES,
    CONCEPTS,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    TESTBED_DIR,
    classify,
    generate,
    load_prompts,
    load_testbed_classifier,
    load_testbed_pipeline,
)
from rece_lightning.testbed.data import make_set

CLASSIFIER_BAR = 0.98
PARAPHRASE_BAR = 0.90
IMPLICIT_BAR = 0.80


def classifier_accuracy(n: int, seed: int) -> dict[str, float]:
    """Accuracy per attribute of the shipped classifier on ``n`` fresh renders."""
    data = make_set(n, seed=seed)
    pred = classify(torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255.0, load_testbed_classifier())
    return {
        k: float(np.mean([ATTRIBUTES[k].index(p) == y for p, y in zip(pred[k], data.labels[:, i], strict=True)]))
        for i, k in enumerate(ATTRIBUTES)
    }


def save_grid(images: list[Image.Image], path: str, cols: int = 16, scale: int = 3) -> None:
    """Save images as an upscaled grid PNG."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    grid.resize((cols * w * scale, rows * h * scale), Image.Resampling.NEAREST).save(path)


def evaluate_concept(
    pipe: object, concept: str, steps: int, guidance: float, limit: int | None
) -> tuple[dict[str, dict[str, float]], list[Image.Image], list[dict[str, str]]]:
    """Generate every prompt of a concept CSV and score it with the classifier."""
    rows = load_prompts(concept)
    if limit:
        by_kind: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in rows:
            if len(by_kind[r["kind"]]) < limit:
                by_kind[r["kind"]].append(r)
        rows = [r for rs in by_kind.values() for r in rs]
    images = generate(pipe, [r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows], steps, guidance)
    pred = classify(images)
    c = CONCEPTS[concept]
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        kind = r["kind"]
        for attr in ("shape", "color", "pattern"):
            if r[attr]:
                hits[kind][attr].append(pred[attr][i] == r[attr])
        hits[kind]["concept"].append(pred[c.attribute][i] == c.name)
    stats = {
        kind: {**{a: float(np.mean(v)) for a, v in d.items()}, "n": float(len(d["concept"]))}
        for kind, d in hits.items()
    }
    return stats, images, rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 if every bar is met (1 otherwise, with --strict)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=TESTBED_DIR, help="pipeline folder (default: shipped)")
    ap.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    ap.add_argument("--limit", type=int, default=None, help="max prompts per kind and concept (quick mode)")
    ap.add_argument("--n-classifier", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", default=None, help="save a PNG grid of the generated images")
    ap.add_argument("--json", default=None, help="write the numbers as JSON")
    ap.add_argument("--skip-timing", action="store_true", help="do not time a batch of 64 images")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a bar is missed")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {}

    acc = classifier_accuracy(args.n_classifier, seed=20240)
    report["classifier"] = acc
    print(f"== classifier accuracy on {args.n_classifier} fresh renders")
    for k, v in acc.items():
        print(f"   {k:<10} {100 * v:6.2f} %")

    pipe = load_testbed_pipeline(folder=args.folder)
    if not args.skip_timing:
        generate(pipe, ["a red triangle"], [0], args.steps, args.guidance)  # warm-up
        t0 = time.perf_counter()
        generate(pipe, ["a blue striped star"] * 64, list(range(64)), args.steps, args.guidance, batch_size=64)
        t64 = time.perf_counter() - t0
        report["seconds_per_64_images"] = t64
        print(f"== generating 64 images ({args.steps} DDIM steps, guidance {args.guidance}): {t64:.1f} s")

    all_images: list[Image.Image] = []
    per_concept: dict[str, dict[str, dict[str, float]]] = {}
    n_images = 0
    for concept in CONCEPTS:
        t0 = time.perf_counter()
        stats, images, _ = evaluate_concept(pipe, concept, args.steps, args.guidance, args.limit)
        n_images += len(images)
        all_images += images
        per_concept[concept] = stats
        print(f"== {concept} ({len(images)} images, {time.perf_counter() - t0:.0f} s); % of images matching the prompt")
        print(f"   {'kind':<11}{'n':>5}{'shape':>8}{'color':>8}{'pattern':>9}  {concept + ' present':>16}")
        for kind in ("explicit", "paraphrase", "implicit", "neighbour", "unrelated"):
            if kind not in stats:
                continue
            s = stats[kind]

            def fmt(a: str, s: dict[str, float] = s) -> str:
                return f"{100 * s[a]:.1f}" if a in s else "-"

            print(
                f"   {kind:<11}{int(s['n']):>5}{fmt('shape'):>8}{fmt('color'):>8}{fmt('pattern'):>9}  {fmt('concept'):>16}"
            )
    report["concepts"] = per_concept
    report["n_images"] = n_images

    def pooled(kind: str, key: str) -> float:
        num = sum(
            per_concept[c][kind][key] * per_concept[c][kind]["n"] for c in per_concept if key in per_concept[c][kind]
        )
        den = sum(per_concept[c][kind]["n"] for c in per_concept if key in per_concept[c][kind])
        return num / den

    bars = {
        "classifier accuracy (min over attributes) >= 98%": (min(acc.values()), CLASSIFIER_BAR),
        "held-out paraphrases: prompted shape >= 90%": (pooled("paraphrase", "shape"), PARAPHRASE_BAR),
        "held-out paraphrases: prompted colour >= 90%": (pooled("paraphrase", "color"), PARAPHRASE_BAR),
    }
    for concept in per_concept:
        bars[f"implicit prompts produce '{concept}' >= 80%"] = (
            per_concept[concept]["implicit"]["concept"],
            IMPLICIT_BAR,
        )
    print(f"== quality bars ({n_images} generated images)")
    ok_all = True
    for name, (value, bar) in bars.items():
        ok = value >= bar
        ok_all &= ok
        print(f"   [{'PASS' if ok else 'FAIL'}] {name}: {100 * value:.1f} %")
    report["bars"] = {k: {"value": v, "bar": b, "pass": v >= b} for k, (v, b) in bars.items()}
    if args.grid:
        save_grid(all_images, args.grid)
        print(f"grid saved to {args.grid}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0 if ok_all or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
