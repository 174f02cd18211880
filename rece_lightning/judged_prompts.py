"""Judged prompts for ``recipe: robust`` (``robust.judged_prompts``): which of the model's own implicit captions show
the concept?

:func:`judge_implicit_captions` samples captions of the testbed's *implicit* training cues (the cues of every
attribute, not only the concept's: "a yield sign", "the sun", "a candy cane heart shape" …; never a held-out cue),
generates each with ``seeds`` seeds on the model it is given (the original model) and labels it with the testbed
classifier: ``shows_concept = 1`` when at least ``keep`` images show the concept, ``0`` when none does (the rest is
ambiguous and left out). The robust recipe erases the first kind and preserves the second. Each concept prompt gets
an ``anchor``: what the judge saw, with the concept replaced by another value of its attribute ("a yield sign", drawn
as a red outlined triangle → "a red outlined circle"), so that the edit maps the prompt to the same picture without
the concept. Only the model, its caption distribution and the judge are used, never an evaluation prompt.
:func:`write_judged_prompts` writes the CSV that :func:`rece_lightning.robust.read_judged` reads.

From the command line (on the testbed)::

    python -m rece_lightning.judged_prompts --concept striped --out striped_implicit.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rece_lightning.files import atomic_path

__all__ = ["COLUMNS", "SEED_OFFSET", "JudgedPrompt", "implicit_captions", "judge_implicit_captions", "main",
           "write_judged_prompts"]

SEED_OFFSET = 500_000
"""Generation seeds start here, far from the evaluation prompts' seeds."""

COLUMNS = ("prompt", "shows_concept", "votes", "seeds", "anchor")
"""The columns of a judged-prompt CSV (``prompt`` and ``shows_concept`` are required by the reader)."""

Generate = Callable[[list[str], list[int]], list[Any]]


@dataclass(frozen=True)
class JudgedPrompt:
    """One judged caption: whether it shows the concept, by how many of ``seeds`` images, and its anchor (``""``:
    none; the recipe then uses the concept's anchor)."""

    prompt: str
    shows_concept: bool
    votes: int
    seeds: int
    anchor: str = ""


def implicit_captions(n: int, seed: int) -> list[str]:
    """``n`` draws of the testbed grammar's implicit captions (all non-held-out cues, uniformly), deduplicated."""
    import numpy as np

    from rece_lightning.testbed.captions import IMPLICIT_CUES, implicit_caption, scene_for_cue

    rng = np.random.default_rng(seed)
    cues = [c for c in IMPLICIT_CUES if not c.heldout]
    out = []
    for _ in range(n):
        cue = cues[int(rng.integers(len(cues)))]
        out.append(implicit_caption(cue, scene_for_cue(cue, rng), rng, name_background=rng.random() < 0.5))
    return list(dict.fromkeys(out))


def judge_implicit_captions(generate: Generate, concept: str, *, samples: int = 200, seeds: int = 4, keep: int = 3,
                            sample_seed: int = 7, anchors: bool = True, batch: int = 64) -> list[JudgedPrompt]:
    """Judge ``samples`` implicit testbed captions on the model behind ``generate`` (see the module docstring).

    Args:
        generate: images of the model to judge, ``generate(prompts, seeds)`` (e.g. ``RECEModule.generate`` before
            any edit).
        concept: a testbed shape or pattern.
        samples, sample_seed: how many captions are drawn (before deduplication), and from which seed.
        seeds, keep: images per caption; a caption shows the concept when at least ``keep`` of them do.
        anchors: describe each concept caption's image without the concept (else the anchor is left empty).
        batch: images generated at once.
    """
    import torch

    from rece_lightning.callbacks.classifier import ClassifierAccuracy
    from rece_lightning.testbed.world import PATTERNS, SHAPES

    judge = ClassifierAccuracy()
    judge.prepare()
    attribute = judge.concept_attribute(concept)
    captions = implicit_captions(samples, sample_seed)
    prompts = [c for c in captions for _ in range(seeds)]
    generation_seeds = [SEED_OFFSET + i for i in range(len(prompts))]
    predictions: list[dict[str, str]] = []
    with torch.no_grad():
        for begin in range(0, len(prompts), batch):
            images = generate(prompts[begin : begin + batch], generation_seeds[begin : begin + batch])
            predictions += [{h: label for h, (label, _) in p.items()} for p in judge.predict(images)]
    others = [v for v in (SHAPES if attribute == "shape" else PATTERNS) if v != concept]
    rows: list[JudgedPrompt] = []
    for i, caption in enumerate(captions):
        seen = [p for p in predictions[i * seeds : (i + 1) * seeds] if p[attribute] == concept]
        if 0 < len(seen) < keep:
            continue  # ambiguous
        anchor = ""
        if seen and anchors:  # what the judge saw, with the concept's value replaced by another one (cycled)
            drawn = {h: Counter(p[h] for p in seen).most_common(1)[0][0] for h in ("color", "pattern", "shape")}
            drawn[attribute] = others[len(rows) % len(others)]
            words = f"{drawn['color']} {drawn['pattern']} {drawn['shape']}"
            anchor = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
        rows.append(JudgedPrompt(caption, bool(seen), len(seen), seeds, anchor))
    return rows


def write_judged_prompts(path: str | Path, rows: Sequence[JudgedPrompt]) -> Path:
    """Write ``rows`` as a judged-prompt CSV (:data:`COLUMNS`), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows((r.prompt, int(r.shows_concept), r.votes, r.seeds, r.anchor) for r in rows)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rece_lightning.judged_prompts``: judge the testbed's implicit captions on the original testbed
    model and write the CSV for ``robust.judged_prompts``."""
    parser = argparse.ArgumentParser(prog="python -m rece_lightning.judged_prompts",
                                     description="Judge the testbed's implicit captions for robust.judged_prompts.")
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sample-seed", type=int, default=7)
    parser.add_argument("--no-anchors", action="store_true",
                        help="leave the anchor column empty (the recipe then uses the concept's anchor)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from rece_lightning.module import RECEModule

    start = time.perf_counter()
    module = RECEModule(pretrained="testbed", concepts=[args.concept], validate_original=False,
                        generation={"num_inference_steps": args.steps, "guidance_scale": 5.0})
    module.editor.apply()
    rows = judge_implicit_captions(module.generate, args.concept, samples=args.samples, seeds=args.seeds,
                                   keep=args.keep, sample_seed=args.sample_seed, anchors=not args.no_anchors)
    write_judged_prompts(args.out, rows)
    shown = [r.prompt for r in rows if r.shows_concept]
    print(f"{len(rows)} implicit captions kept after judging with {args.seeds} seeds in "
          f"{time.perf_counter() - start:.0f} s: {len(shown)} show {args.concept!r} (≥ {args.keep}), "
          f"{len(rows) - len(shown)} never (ambiguous ones left out); e.g. {shown[:6]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
