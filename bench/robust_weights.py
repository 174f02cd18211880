"""How much the judged prompts should weigh in the robust recipe's least squares (issue 21), measured in process.

Takes a finished robust run of a testbed concept (``bench/robust_concepts.py run``), reads what its ``auto`` search
found (``<run>/robust/auto.json`` and ``judged_prompts.csv``), and replays the recipe on the testbed with the judged
prompts weighed:

* ``--weight W``: every judged prompt that shows the concept weighs W (``robust.judged_scale``);
* ``--preserve P``: every judged prompt that never shows it weighs P among the preserved texts
  (``robust.judged_preserve_scale``; the run's own preset value when not given);
* ``--boost B``: the weights start at 1, and before each iteration the judged prompts are generated on the current
  edit (4 seeds, the run's seeds of the search) and judged by the testbed classifier. Each one that still shows the
  concept in at least ``--keep`` images has its weight multiplied by B (with ``--boost-from K``, only before the
  iterations from K on: ``--iterations 4 --boost 16 --boost-from 4`` is one last repair iteration);
* ``--residuals``: after the last stage, each erased caption's relative distance to its anchor in the K/V output
  space (:func:`caption_residuals`), the median and the judged prompts';
* ``--anchors nearest|farthest|mean|context``: each judged prompt that shows the concept is erased towards another
  anchor than the run's (:func:`choose_anchors`; ``context``: the one with the captions' single context anchor, e.g.
  ``--set context_anchor=circle --anchors context``).

After each stage it generates the concept's shipped prompts and prints their rates on the selection half (what the
robust stopping rule reads) and on the report half (the rows it never sees); with ``--heldout`` also on the held-out
prompts of ``bench/robust_search.py`` (new wordings, the rows the original model gets right). The last line is the
stage that the run's stopping rule keeps on the replay's selection half, with its report half (every stage is still
measured after the rule stops).

``--set KEY=VALUE`` changes any other robust setting for the replay (``--set 'gammas=[0.01]'``,
``--set context_anchor=auto`` for the earlier preset's anchors, the other values in turn).

    python bench/robust_weights.py --run runs/concepts/triangle/robust.json --weight 10
    python bench/robust_weights.py --run runs/concepts/triangle/robust.json --boost 4 --keep 1
    python bench/robust_weights.py --run runs/concepts/heart/robust.json --preserve 3 --heldout
    python bench/robust_weights.py --run runs/concepts/triangle/robust.json --anchors nearest
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robust_search import Harness  # noqa: E402

from rece_lightning.lightning.judged_prompts import anchor_of_labels  # noqa: E402
from rece_lightning.lightning.selection_split import SelectionSplit  # noqa: E402
from rece_lightning.recipes.robust.auto import judged_counts, kv_distances, world_neighbours  # noqa: E402
from rece_lightning.recipes.robust.config import RobustConfig  # noqa: E402
from rece_lightning.recipes.robust.expansion import output_features  # noqa: E402
from rece_lightning.recipes.robust.recipe import RobustRecipe  # noqa: E402
from rece_lightning.recipes.selection import Selection  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEYS = ("concept_rate/explicit", "concept_rate/paraphrase", "concept_rate/implicit", "preservation/neighbour",
        "preservation/unrelated")


def choose_anchors(recipe: RobustRecipe, editor, concept: str, attribute: str, rule: str) -> None:
    """Erase each judged concept prompt towards another of its anchors. The run's anchor ("a yellow solid star") has
    the concept's value replaced by the world's other values in turn; the alternatives are every other value. Rule
    ``nearest`` / ``farthest``: the alternative whose token rows are nearest to / farthest from the prompt's in the
    original K/V output space (squared distance); ``mean``: the mean of all the alternatives' rows; ``context``: the
    alternative with the recipe's single context anchor (``context_anchor`` one value, as ``nearest`` resolves it)."""
    values = world_neighbours([concept])
    alternatives = {}
    for prompt in recipe.judged:
        anchor = recipe.caption_anchor.get(prompt, "")
        if anchor:  # as judged_prompts.anchor_of_labels writes it: article, colour, pattern, shape
            labels = dict(zip(("color", "pattern", "shape"), anchor.split()[1:], strict=True))
            alternatives[prompt] = [anchor_of_labels({**labels, attribute: value}) for value in values]
    recipe.text.encode([*recipe.judged, *(a for group in alternatives.values() for a in group)])
    if rule == "mean":
        plain_rows = recipe.anchor_rows
        recipe.anchor_rows = lambda text: (torch.stack([recipe.text.full(a) for a in alternatives[text]]).mean(0)
                                           if text in alternatives else plain_rows(text))
        print(f"{len(alternatives)} judged prompts erased towards the mean of {len(values)} anchors each")
        return
    changed = 0
    for prompt, group in alternatives.items():
        if rule == "context":  # the one value that the captions are erased towards (``--set context_anchor=V``)
            pick = group[values.index(recipe.context_anchor)]
        else:
            distances = kv_distances(editor, recipe.text, prompt, group)
            pick = (min if rule == "nearest" else max)(group, key=distances.__getitem__)
        changed += pick != recipe.caption_anchor[prompt]
        recipe.caption_anchor[prompt] = pick
    print(f"{rule} anchors: {changed} of {len(alternatives)} judged prompts get another anchor")


def caption_residuals(recipe: RobustRecipe, editor) -> dict[str, float]:
    """How far each erased caption still is from its anchor after the current edit, in the K/V output space:
    ``‖W' c − W₀ a‖² / ‖W₀ c − W₀ a‖²`` over all its token rows (0: fitted exactly, 1: not moved)."""
    out = {}
    for caption in recipe.captions:
        rows, anchor = recipe.text.full(caption), recipe.anchor_rows(caption)
        target = output_features(editor, anchor, edited=False)
        moved = output_features(editor, rows, edited=True) - target
        out[caption] = float((moved ** 2).sum() / ((output_features(editor, rows, edited=False) - target) ** 2).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a robust run's record from bench/robust_concepts.py")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--boost", type=float, default=1.0)
    parser.add_argument("--keep", type=int, default=1)
    parser.add_argument("--boost-from", type=int, default=1, help="boost only before iterations from this one on")
    parser.add_argument("--preserve", type=float, default=None, help="robust.judged_preserve_scale")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--heldout", action="store_true", help="also the held-out prompts of robust_search.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another robust setting for the replay, as YAML (e.g. --set 'gammas=[0.1, 1.0]')")
    parser.add_argument("--residuals", action="store_true",
                        help="after the last stage, how far the erased captions still are from their anchors")
    parser.add_argument("--anchors", choices=("run", "nearest", "farthest", "mean", "context"), default="run",
                        help="what each judged concept prompt is erased towards (see the module docstring)")
    args = parser.parse_args()
    record = json.loads(args.run.read_text())
    folder, concept = Path(record["folder"]), record["concept"]
    found = json.loads((folder / "robust" / "auto.json").read_text())
    settings = yaml.safe_load((REPO / "configs" / "testbed_robust.yaml").read_text())["model"]["robust"]
    settings.pop("auto")
    settings.update(concept_texts=found["concept_texts"], judged_prompts=str(folder / "robust" / "judged_prompts.csv"),
                    selection_split=False, judged_scale=args.weight)
    if args.preserve is not None:
        settings["judged_preserve_scale"] = args.preserve
    known = {f.name for f in dataclasses.fields(RobustConfig)}
    for item in args.set:
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in known or not value:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY one of the robust settings "
                         f"({', '.join(sorted(known))})")
        settings[key] = yaml.safe_load(value)
    harness = Harness(concept, heldout=args.heldout)
    rows = harness.shipped
    select, report = SelectionSplit.split([{**row, "row": i} for i, row in enumerate(rows)])
    module = harness.module
    harness.reset()
    recipe = RobustRecipe(module.editor, module.text, module.recipe.concepts, module.recipe.anchors,
                          RobustConfig(**settings))
    if args.anchors != "run":
        choose_anchors(recipe, module.editor, concept, harness.metric.concept_attribute(concept), args.anchors)
    weights = dict.fromkeys(recipe.judged, args.weight)
    plain_blocks = recipe._caption_blocks

    def weighed_blocks():  # the recipe's blocks, each judged prompt's scaled by √(its current weight / W)
        return [(c * (weights[p] / args.weight) ** 0.5, t * (weights[p] / args.weight) ** 0.5) if p in weights
                else (c, t) for (c, t), p in zip(plain_blocks(), recipe.captions, strict=True)]

    recipe._caption_blocks = weighed_blocks
    start = time.perf_counter()
    label = (f"{concept} weight {args.weight:g} boost {args.boost:g} preserve "
             f"{recipe.config.judged_preserve_scale:g} anchors {args.anchors}{''.join(' ' + s for s in args.set)}")

    # the run's stopping rule on the replay's selection half (the guard's reference: the run's original stage)
    original = json.loads((folder / "robust" / "selection.json").read_text())["stages"][0]
    rule = RobustConfig(**{**settings, "selection_split": True}).selection_rule()
    selection = Selection(rule)
    selection.update("original", {rule.guard: original[rule.guard]}, candidate=False)
    reports: dict[str, dict[str, float]] = {}
    rule_open = True

    def measure(stage: str) -> None:
        nonlocal rule_open
        module.editor.apply()
        images = module.generate([r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows])
        records = [{**r, "row": i} for i, r in enumerate(harness.metric.score(images, rows))]
        halves = [harness.metric.summarize([r for i, r in enumerate(records) if i in half])
                  for half in (select, report)]
        if not reports:  # the margins, in images of the selection half, once its rows are scored
            split = SelectionSplit(int(settings.get("stop_margin_images", 1)))
            split.select = select
            concept_margin, kept_margin = split.margins(harness.metric, records)
            selection.rule = dataclasses.replace(rule, margin=concept_margin, guard_margin=kept_margin)
        reports[stage] = halves[1]
        if rule_open:
            rule_open = not selection.update(stage, {rule.metric: halves[0]["concept_rate"],
                                                     rule.guard: halves[0]["preservation"]})
        if args.heldout:
            halves.append(harness.measure(harness.heldout))
        print(f"{label} {stage:<7}" + "".join(
            f"  {name}: " + " ".join(f"{100 * half.get(k, float('nan')):5.1f}" for k in KEYS)
            for name, half in zip(("selection", "report", "held-out"), halves, strict=False))
            + f"  ({time.perf_counter() - start:.0f} s)", flush=True)

    recipe.first_edit()
    measure("uce")
    for index in range(1, args.iterations + 1):
        if args.boost != 1.0 and index >= args.boost_from:
            module.editor.apply()
            counts, _ = judged_counts(module.generate, harness.metric.judge, concept, recipe.judged, 4)
            shown = [p for p, n in zip(recipe.judged, counts, strict=True) if n >= args.keep]
            for prompt in shown:
                weights[prompt] *= args.boost
            print(f"before rece-{index}: {len(shown)} judged prompts still show {concept!r}: {shown}", flush=True)
        recipe.iteration()
        measure(f"rece-{index}")
    if args.residuals:
        residuals = caption_residuals(recipe, module.editor)
        ranked = sorted(residuals, key=residuals.get, reverse=True)
        print(f"residuals after the last stage: median {statistics.median(residuals.values()):.3f} over "
              f"{len(residuals)} erased captions; judged prompts (rank of {len(ranked)}): " + ", ".join(
                  f"{p!r} {residuals[p]:.3f} ({ranked.index(p) + 1})" for p in recipe.judged), flush=True)
    kept = reports[selection.kept]
    print(f"{label} kept {selection.kept}: report " + " ".join(f"{100 * kept.get(k, float('nan')):5.1f}" for k in KEYS)
          + f"  ({selection.reason()})", flush=True)


if __name__ == "__main__":
    main()
