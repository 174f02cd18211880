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
:func:`write_judged_prompts` writes the CSV that :func:`rece_lightning.recipes.robust.captions.read_judged` reads.

From the command line (on the testbed)::

    python -m rece_lightning.lightning.judged_prompts --concept striped --out striped_implicit.csv
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
from rece_lightning.recipes.robust.auto import SEED_OFFSET, judged_counts, read_captions, world_neighbours

__all__ = ["COLUMNS", "SEED_OFFSET", "JudgedPrompt", "anchor_of_labels", "implicit_captions", "judge_implicit_captions",
           "main", "write_judged_prompts"]

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
    return read_captions("testbed", n, seed)


def judge_implicit_captions(generate: Generate, concept: str, *, samples: int = 200, seeds: int = 4, keep: int = 3,
                            sample_seed: int = 7, anchors: bool = True, batch: int = 64, judge: Any = None,
                            captions: Sequence[str] | None = None) -> list[JudgedPrompt]:
    """Judge ``samples`` implicit testbed captions on the model behind ``generate`` (see the module docstring).

    Args:
        generate: images of the model to judge, ``generate(prompts, seeds)`` (e.g. ``RECEModule.generate`` before
            any edit).
        concept: a testbed shape, colour or pattern (any concept the judge knows, with ``judge``).
        samples, sample_seed: how many captions are drawn (before deduplication), and from which seed.
        seeds, keep: images per caption; a caption shows the concept when at least ``keep`` of them do.
        anchors: describe each concept caption's image without the concept (else the anchor is left empty); only a
            judge that labels colour, pattern and shape (the testbed classifier) can.
        batch: images generated at once.
        judge: the metric callback whose :meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.judge` labels the
            images (default: the testbed classifier, ``ClassifierAccuracy``; ``robust.judged_prompts: auto`` passes
            the run's judge).
        captions: the captions to judge (default: :func:`implicit_captions` of ``samples`` and ``sample_seed``).
    """
    if judge is None:
        from rece_lightning.lightning.callbacks.classifier import ClassifierAccuracy

        judge = ClassifierAccuracy()
        judge.prepare()
    describe = anchors and {"color", "pattern", "shape"} <= set(getattr(judge, "heads", None) or {})
    captions = list(captions) if captions is not None else implicit_captions(samples, sample_seed)

    def labels(images: list[Any]) -> list[dict[str, str]]:
        return [{h: label for h, (label, _) in p.items()} for p in judge.predict(images)]

    counts, seen = judged_counts(generate, judge.judge, concept, captions, seeds, batch,
                                 predict=labels if describe else None)
    attribute = judge.concept_attribute(concept) if describe else ""
    others = world_neighbours([concept])
    rows: list[JudgedPrompt] = []
    for i, (caption, votes) in enumerate(zip(captions, counts, strict=True)):
        if 0 < votes < keep:
            continue  # ambiguous
        anchor = ""
        if votes and describe and others:  # what the judge saw, the concept's value replaced by another (cycled)
            drawn = {h: Counter(p[h] for p in seen[i]).most_common(1)[0][0] for h in ("color", "pattern", "shape")}
            drawn[attribute] = others[len(rows) % len(others)]
            anchor = anchor_of_labels(drawn)
        rows.append(JudgedPrompt(caption, votes > 0, votes, seeds, anchor))
    return rows


def anchor_of_labels(labels: dict[str, str]) -> str:
    """The anchor of a judged image from its colour, pattern and shape labels: "a yellow solid star"."""
    words = f"{labels['color']} {labels['pattern']} {labels['shape']}"
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def write_judged_prompts(path: str | Path, rows: Sequence[JudgedPrompt | dict]) -> Path:
    """Write ``rows`` as a judged-prompt CSV (:data:`COLUMNS`), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        rows = [r if isinstance(r, JudgedPrompt) else JudgedPrompt(**r) for r in rows]
        writer.writerows((r.prompt, int(r.shows_concept), r.votes, r.seeds, r.anchor) for r in rows)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rece_lightning.lightning.judged_prompts``: judge the testbed's implicit captions on the original testbed
    model and write the CSV for ``robust.judged_prompts``."""
    parser = argparse.ArgumentParser(prog="python -m rece_lightning.lightning.judged_prompts",
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
    from rece_lightning.testbed import generate, load_testbed_pipeline

    start = time.perf_counter()
    pipe = load_testbed_pipeline()  # the original model (this module does not import the Lightning module)
    pipe.set_progress_bar_config(disable=True)

    def generate_original(prompts: list[str], seeds: list[int]) -> list[Any]:
        return generate(pipe, prompts, seeds, num_inference_steps=args.steps, guidance_scale=5.0)

    rows = judge_implicit_captions(generate_original, args.concept, samples=args.samples, seeds=args.seeds,
                                   keep=args.keep, sample_seed=args.sample_seed, anchors=not args.no_anchors)
    write_judged_prompts(args.out, rows)
    shown = [r.prompt for r in rows if r.shows_concept]
    print(f"{len(rows)} implicit captions kept after judging with {args.seeds} seeds in "
          f"{time.perf_counter() - start:.0f} s: {len(shown)} show {args.concept!r} (≥ {args.keep}), "
          f"{len(rows) - len(shown)} never (ambiguous ones left out); e.g. {shown[:6]}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
