"""A judged corpus of implicit prompts for ``recipe: robust`` (``robust.judged_prompts``): which of the model's own
implicit captions show the concept?

Samples ``--samples`` captions of the testbed's *implicit* training cues (the cues of every attribute, not only the
concept's: "a yield sign", "the sun", "a candy cane heart shape" …; never a held-out cue), generates each with
``--seeds`` seeds on the original model and labels it with the testbed classifier: ``shows_concept = 1`` when at least
``--keep`` images show the concept, ``0`` when none does (the rest is ambiguous and left out). The robust recipe erases
the first kind and preserves the second. Each concept prompt gets an ``anchor``: what the judge saw, with the concept
replaced by another value of its attribute ("a yield sign", drawn as a red outlined triangle → "a red outlined
circle"), so that the edit maps the prompt to the same picture without the concept. This is the caption-level counterpart of ``bench/robust_expand.py``: only
the model, its caption distribution and the judge are used, never an evaluation prompt. (On Stable Diffusion the
counterpart is a prompt corpus without the concept's words, e.g. captions of a dataset, judged by NudeNet.)

    python bench/robust_corpus.py --concept striped --out configs/robust/striped_implicit.csv
    python bench/robust_corpus.py --concept triangle --no-anchors --out configs/robust/triangle_implicit.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from rece_lightning.callbacks.classifier import ClassifierAccuracy
from rece_lightning.files import atomic_path
from rece_lightning.module import RECEModule
from rece_lightning.testbed.captions import IMPLICIT_CUES, implicit_caption, scene_for_cue
from rece_lightning.testbed.world import PATTERNS, SHAPES

SEED_OFFSET = 500_000  # generation seeds far from the evaluation prompts' seeds


def implicit_captions(n: int, seed: int) -> list[str]:
    """``n`` draws of the training grammar's implicit captions (all non-held-out cues, uniformly), deduplicated."""
    rng = np.random.default_rng(seed)
    cues = [c for c in IMPLICIT_CUES if not c.heldout]
    out = []
    for _ in range(n):
        cue = cues[int(rng.integers(len(cues)))]
        out.append(implicit_caption(cue, scene_for_cue(cue, rng), rng, name_background=rng.random() < 0.5))
    return list(dict.fromkeys(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sample-seed", type=int, default=7)
    parser.add_argument("--no-anchors", action="store_true",
                        help="leave the anchor column empty (the recipe then uses the concept's anchor)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    module = RECEModule(pretrained="testbed", concepts=[args.concept], validate_original=False,
                        generation={"num_inference_steps": args.steps, "guidance_scale": 5.0})
    module.editor.apply()
    judge = ClassifierAccuracy()
    judge.prepare()
    attribute = judge.concept_attribute(args.concept)
    captions = implicit_captions(args.samples, args.sample_seed)
    prompts = [c for c in captions for _ in range(args.seeds)]
    seeds = [SEED_OFFSET + i for i in range(len(prompts))]
    predictions: list[dict[str, str]] = []
    with torch.no_grad():
        for begin in range(0, len(prompts), 64):
            images = module.generate(prompts[begin : begin + 64], seeds[begin : begin + 64])
            predictions += [{h: label for h, (label, _) in p.items()} for p in judge.predict(images)]
    others = [v for v in (SHAPES if attribute == "shape" else PATTERNS) if v != args.concept]
    rows = []
    for i, caption in enumerate(captions):
        seen = [p for p in predictions[i * args.seeds : (i + 1) * args.seeds] if p[attribute] == args.concept]
        if 0 < len(seen) < args.keep:
            continue  # ambiguous
        anchor = ""
        if seen and not args.no_anchors:  # what the judge saw, with the concept's value replaced by another one (cycled)
            drawn = {h: Counter(p[h] for p in seen).most_common(1)[0][0] for h in ("color", "pattern", "shape")}
            drawn[attribute] = others[len(rows) % len(others)]
            words = f"{drawn['color']} {drawn['pattern']} {drawn['shape']}"
            anchor = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
        rows.append((caption, int(bool(seen)), len(seen), anchor))
    with atomic_path(args.out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "shows_concept", "votes", "seeds", "anchor"])
        writer.writerows((c, s, v, args.seeds, a) for c, s, v, a in rows)
    shown = [c for c, s, _, _ in rows if s]
    print(f"{len(captions)} implicit captions judged with {args.seeds} seeds in {time.perf_counter() - start:.0f} s: "
          f"{len(shown)} show {args.concept!r} (≥ {args.keep}), {len(rows) - len(shown)} never, "
          f"{len(captions) - len(rows)} ambiguous (left out); e.g. {shown[:6]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
