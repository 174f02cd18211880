"""Judge-in-the-loop concept expansion (issue 12): which single words still make the model draw the concept?

The whole words of the text encoder's vocabulary (the first ``--pool`` ones) are scored in the model's K/V output space
(:func:`rece_lightning.recipes.robust.expansion.expansion_scores`: how much closer ``"a w"``'s keys and values are to the concept's than
to any neighbour's); the ``--shortlist`` best are prompted as ``"a w"`` with ``--verify`` seeds, and the words whose
images the testbed classifier labels as the concept at least ``--keep`` times are printed (and written as JSON). These
are the discrete counterpart of RECE's derived embeddings: texts to erase as ordinary concepts. Only the model and the
judge are used, no evaluation prompt.

    python bench/robust_expand.py --concept triangle --pool 9000 --out runs/robust/expand_triangle.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rece_lightning.lightning.callbacks.classifier import ClassifierAccuracy
from rece_lightning.lightning.module import RECEModule
from rece_lightning.recipes.robust.expansion import expansion_scores, vocabulary_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("--pool", type=int, default=9000)
    parser.add_argument("--shortlist", type=int, default=150)
    parser.add_argument("--neighbours", nargs="*", default=["circle", "square", "star", "heart", "cross"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--verify", type=int, default=4)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = RECEModule(pretrained="testbed", concepts=[args.concept], validate_original=False,
                        generation={"num_inference_steps": args.steps, "guidance_scale": 5.0})
    judge = ClassifierAccuracy()
    judge.prepare()
    attribute = judge.concept_attribute(args.concept)
    words = vocabulary_words(module.text.tokenizer, args.pool)
    t0 = time.time()

    def hits(texts: list[str], seed: int) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(texts), args.batch):
            chunk = texts[start:start + args.batch]
            images = module.generate([f"a {w}" for w in chunk], [seed] * len(chunk))
            out += [p[attribute][0] == args.concept for p in judge.predict(images)]
        return out

    texts = [f"a {w}" for w in words]
    module.text.encode([*texts, f"a {args.concept}", *(f"a {n}" for n in args.neighbours)])
    scores = expansion_scores(module.editor, [module.text.full(t) for t in texts],
                              module.text.full(f"a {args.concept}"),
                              [module.text.full(f"a {n}") for n in args.neighbours])
    first = [words[int(i)] for i in scores.argsort(descending=True)[: args.shortlist]]
    print(f"shortlist of {len(first)}/{len(words)} words by K/V score ({time.time() - t0:.0f} s): {first}", flush=True)
    counts = {w: 0 for w in first}
    for seed in range(1, 1 + args.verify):
        for w, hit in zip(first, hits(first, seed), strict=True):
            counts[w] += hit
    found = sorted((w for w, c in counts.items() if c >= args.keep), key=lambda w: -counts[w])
    print(f"kept ({args.keep}+/{args.verify} seeds): {found} ({time.time() - t0:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"concept": args.concept, "pool": len(words), "found": found,
                                        "counts": counts, "settings": vars(args) | {"out": str(args.out)}}, indent=1))


if __name__ == "__main__":
    main()
