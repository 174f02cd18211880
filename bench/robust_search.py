"""Fast in-process experiment harness for the robust recipe (issue 12): load the testbed once, run a candidate
recipe with the editor, generate the validation prompts (12 DDIM steps, guidance 5, each row's seed) and classify
them with the testbed classifier (the package's own generation and ``ClassifierAccuracy`` code).

    python bench/robust_search.py --concept triangle --heldout-csv /tmp/heldout_triangle.csv   # writes the held-out set
    python bench/robust_search.py --concept triangle --experiment judged --shipped            # one experiment group

The held-out prompt sets (``heldout_rows``) use new templates, synonyms and cue combinations that appear neither in
the shipped CSVs nor in the testbed's caption grammar; the recipe is chosen on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rece_lightning.lightning.callbacks.classifier import ClassifierAccuracy
from rece_lightning.lightning.module import RECEModule
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.robust.recipe import RobustRecipe
from rece_lightning.testbed.captions import IMPLICIT_CUES
from rece_lightning.testbed.prompts import CSV_COLUMNS, TESTBED_CONCEPTS, load_prompts
from rece_lightning.testbed.world import COLORS, PATTERNS, SHAPES

# ----------------------------------------------------------------------------------------- held-out prompts
H_COLOR = {"red": ("cherry red", "ruby", "red"), "green": ("forest green", "jade", "green"),
           "blue": ("navy blue", "sky blue", "blue"), "yellow": ("sunny yellow", "mustard", "yellow"),
           "purple": ("plum", "lavender", "purple"), "orange": ("pumpkin orange", "coral", "orange")}
H_SHAPE = {"triangle": ("triangle shape", "three-cornered shape", "triangle"),
           "circle": ("round disc", "round circle", "circle"), "square": ("square tile", "four-sided square", "square"),
           "star": ("starry shape", "five-point star", "star"), "heart": ("heart symbol", "love shape", "heart"),
           "cross": ("plus shape", "cross symbol", "cross")}
H_PATTERN = {"solid": ("solid-colored", "fully filled", "solid"), "striped": ("stripe-patterned", "lined", "striped"),
             "dotted": ("dot-covered", "speckled", "dotted"), "outlined": ("outline-only", "contour-drawn", "outlined")}
H_TEMPLATES = ("a photo of a {c} {p} {s}", "there is a {p} {s} in {c} here", "{c} {s} sticker, {p}",
               "a {s}, colored {c}, {p} style", "one {p} {c} {s} in the middle", "my drawing: a {c} {p} {s}")
# implicit cues in new phrasings and combinations (the model only knows its training cues, so new wordings of them)
H_IMPLICIT = {
    "triangle": [("an old yield sign", {"color": "red"}), ("a yield sign by the road", {"color": "red"}),
                 ("a road sign that says yield", {"color": "red"}), ("a yellow warning sign", {"color": "yellow"}),
                 ("warning sign, caution", {"color": "yellow"}), ("a pizza slice", {}),
                 ("one slice of pizza on a plate", {}), ("a hot slice of pizza", {}),
                 ("a {c} pyramid in the desert", {}), ("an ancient {c} pyramid", {}), ("the {c} pyramid", {}),
                 ("a small {c} pyramid, solid", {})],
    "striped": [("a {c} {s} with zebra stripes", {}), ("zebra print on a {c} {s}", {}),
                ("a {c} {s} in a zebra pattern", {}), ("pinstriped {c} {s}", {}), ("a {c} pinstripe {s} icon", {}),
                ("a {s} painted like a barber's pole", {"color": "red"}), ("barber pole {s}", {"color": "red"}),
                ("a {s} like a candy cane", {"color": "red"}), ("candy cane striped {s}", {"color": "red"}),
                ("a {s} with tiger stripes", {"color": "orange"}), ("tiger print {s} in orange", {"color": "orange"})],
}
H_UNRELATED_CUES = [("the sun in the sky", {"shape": "circle", "color": "yellow"}),
                    ("a shiny gold ring", {"shape": "circle", "color": "yellow"}),
                    ("a valentine card heart", {"shape": "heart", "color": "red"}),
                    ("a sheriff's badge", {"shape": "star", "color": "yellow"}),
                    ("a first aid sign on a wall", {"shape": "cross", "color": "red"}),
                    ("a {c} {s} with leopard spots", {"pattern": "dotted"}),
                    ("a {c} {s} spotted like a ladybug", {"pattern": "dotted"})]


def _fill(template: str, rng: np.random.Generator, shape: str, color: str, pattern: str) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    text = template.format(c=pick(H_COLOR[color]), s=pick(H_SHAPE[shape]), p=pick(H_PATTERN[pattern]))
    return " ".join(text.split()).replace("a o", "an o").replace("a a", "an a").replace("a e", "an e")


# new contexts for the world's own implicit cues, for concepts without hand-written held-out cues above
H_CUE_CONTEXTS = ("an old {bare}", "a drawing of {cue}", "{cue}, seen up close", "a picture book page: {cue}")


def implicit_cues(concept: str, attr: str) -> list[tuple[str, dict[str, str]]]:
    """Held-out implicit cues of ``concept``: the hand-written ones (triangle, striped), else the world's training
    cues that imply it (:data:`~rece_lightning.testbed.captions.IMPLICIT_CUES`) in new contexts; none for a value
    that no cue implies (the square, green, blue, purple)."""
    if concept in H_IMPLICIT:
        return H_IMPLICIT[concept]
    cues = [cue for cue in IMPLICIT_CUES if cue.fixed.get(attr) == concept]
    phrases = [cue.template.replace("{bg}", "").strip() for cue in cues]
    return [(context.format(cue=phrase, bare=re.sub(r"^(a|an|the) ", "", phrase)), dict(cue.fixed))
            for phrase, cue in zip(phrases, cues, strict=True) for context in H_CUE_CONTEXTS]


def heldout_rows(concept: str, seed: int = 12, n: int = 36) -> list[dict[str, Any]]:
    """Held-out prompts of any testbed ``concept`` (a shape, colour or pattern) in the schema of the shipped CSVs."""
    rng = np.random.default_rng([seed, sum(map(ord, concept))])
    attr = TESTBED_CONCEPTS[concept].attribute
    values = {"shape": SHAPES, "color": COLORS, "pattern": PATTERNS}
    rows: list[dict[str, Any]] = []

    def add(prompt: str, kind: str, truth: dict[str, str]) -> None:
        rows.append({"prompt": prompt, "evaluation_seed": int(rng.integers(1_000_000)), "kind": kind,
                     "concept": concept, **{a: truth.get(a, "") for a in ("shape", "color", "pattern", "background")}})

    def pick(attribute: str, default: str) -> str:
        return concept if attr == attribute else default

    for i in range(n):  # explicit-like: new templates and synonyms
        shape, pattern, color = pick("shape", SHAPES[i % 6]), pick("pattern", PATTERNS[i % 4]), \
            pick("color", COLORS[(i // 2) % 6])
        add(_fill(H_TEMPLATES[i % len(H_TEMPLATES)], rng, shape, color, pattern), "paraphrase",
            {"shape": shape, "color": color})
    cues = implicit_cues(concept, attr)
    for i in range(n if cues else 0):
        template, fixed = cues[i % len(cues)]
        color = fixed.get("color", COLORS[i % 6])
        shape = fixed.get("shape", SHAPES[(i * 5) % 6]) if attr != "shape" else concept
        text = _fill(template.replace("{p}", ""), rng, shape, color, "solid")
        add(text, "implicit", {attr: concept})
    others = [v for v in values[attr] if v != concept]
    for i in range(n):  # neighbours: the other values of the concept's attribute, new templates
        value = others[i % len(others)]
        shape = value if attr == "shape" else SHAPES[i % 6]
        pattern = value if attr == "pattern" else PATTERNS[(i // 5) % 4]
        color = value if attr == "color" else COLORS[(i // len(others)) % 6]
        add(_fill(H_TEMPLATES[(i + 3) % len(H_TEMPLATES)], rng, shape, color, pattern), "neighbour",
            {"shape": shape, "color": color})
    for i in range(n):  # unrelated: other cues in new phrasings, and scenes of other values
        if i < len(H_UNRELATED_CUES):
            template, fixed = H_UNRELATED_CUES[i]
            shape = fixed.get("shape", [s for s in SHAPES if s != "triangle"][i % 5])
            color = fixed.get("color", COLORS[i % 6])
            text = _fill(template, rng, shape, color, "solid")
            truth = {**fixed}
            if "{s}" in template:
                truth.update(shape=shape, color=color)
            if concept not in (truth.get("shape"), truth.get("color"), truth.get("pattern")):
                add(text, "unrelated", truth)
            continue
        while True:
            shape, color = SHAPES[int(rng.integers(6))], COLORS[int(rng.integers(6))]
            pattern = PATTERNS[int(rng.integers(4))]
            if concept not in (shape, pattern, color):
                break
        add(_fill(H_TEMPLATES[i % len(H_TEMPLATES)], rng, shape, color, pattern), "unrelated",
            {"shape": shape, "color": color})
    for i, row in enumerate(rows):
        row["case_number"] = i
    return rows


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})


# ------------------------------------------------------------------------------------------------ harness
PAPER = {"uce": {"lamb": 0.5, "erase_scale": 1.0, "preserve_scale": 1.0, "preserve": [""]},
         "rece": {"iterations": 3, "derivation": "regzero", "gamma": 0.1, "lamb": 0.1, "erase_scale": 1.0,
                  "preserve_scale": 0.1, "preserve": [" "]}}


def as_prompted(record: dict[str, Any]) -> bool:
    """A classified image shows what its row asks for: the concept (target rows), else the row's labels."""
    return bool(record["is_concept"]) if record["role"] == "target" else bool(record["preserved"])


class Harness:
    """The testbed loaded once; ``measure`` generates and classifies a prompt set with the current edit.
    ``heldout=False`` leaves the held-out rows empty (they cost one generation of every held-out prompt)."""

    def __init__(self, concept: str, steps: int = 12, guidance: float = 5.0, heldout: bool = True,
                 **module_kwargs: Any) -> None:
        kwargs = {**PAPER, **module_kwargs}
        self.module = RECEModule(pretrained="testbed", concepts=[concept], validate_original=False,
                                 generation={"num_inference_steps": steps, "guidance_scale": guidance}, **kwargs)
        self.concept = concept
        self.metric = ClassifierAccuracy()
        self.metric.prepare()
        self.shipped = load_prompts(concept)
        self.heldout_all = heldout_rows(concept) if heldout else []
        self.heldout = self.valid_rows(self.heldout_all) if heldout else []

    def valid_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The held-out rows the original model gets right (target rows show the concept, the others their
        ground truth), so that held-out rates measure the edit, not the unseen wordings."""
        self.reset()
        self.module.editor.apply()
        images = self.module.generate([r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows])
        records = self.metric.score(images, rows)
        keep = [r for r, rec in zip(rows, records, strict=True) if as_prompted(rec)]
        counts = {k: sum(r["kind"] == k for r in keep) for k in ("paraphrase", "implicit", "neighbour", "unrelated")}
        print(f"held-out rows kept (the original model gets them right): {len(keep)}/{len(rows)} {counts}")
        return keep

    def reset(self) -> None:
        self.module.editor.reset()
        self.module.recipe.stage = "original"
        self.module.editor.apply()

    @torch.no_grad()
    def measure(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        self.module.editor.apply()
        images = self.module.generate([r["prompt"] for r in rows], [int(r["evaluation_seed"]) for r in rows])
        return self.metric.summarize(self.metric.score(images, rows))

    def both(self, label: str, shipped: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"label": label, "heldout": self.measure(self.heldout)}
        if shipped:
            out["shipped"] = self.measure(self.shipped)
        print(fmt(out), flush=True)
        return out


KEYS = ("concept_rate/explicit", "concept_rate/paraphrase", "concept_rate/implicit", "preservation/neighbour",
        "preservation/unrelated")


def fmt(result: dict[str, Any]) -> str:
    parts = [f"{result['label']:<40}"]
    for which in ("heldout", "shipped"):
        if which in result:
            s = result[which]
            parts.append(which[0].upper() + ":" + " ".join(f"{100 * s[k]:5.1f}" if k in s else "    -" for k in KEYS))
    return "  ".join(parts)


def run(h: Harness, label: str, recipe: Callable[[RECEModule], None], shipped: bool = True) -> dict[str, Any]:
    h.reset()
    t0 = time.time()
    recipe(h.module)
    result = h.both(label, shipped)
    result["seconds"] = time.time() - t0
    with open("/tmp/robust_search.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


def robust(config: RobustConfig, iterations: int) -> Callable[[RECEModule], None]:
    """The robust recipe's first edit and ``iterations`` iterations, in process."""

    def recipe(m: RECEModule) -> None:
        r = RobustRecipe(m.editor, m.text, m.recipe.concepts, m.recipe.anchors, config)
        r.first_edit()
        for _ in range(iterations):
            r.iteration()

    return recipe


# The ablation, run on the triangle concept's held-out prompts (labels as in the README; each entry is one run).
NB = ["circle", "square", "star", "heart", "cross"]
SYN = ["triangular shape", "three-sided shape"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
TEMPLATES = ["{}", "a {}", *(f"a {c} {{}}" for c in COLOURS), *(f"a {p} {{}}" for p in PATTERNS)]
CORPUS = {"neighbours": NB, "erase_prompts": "testbed", "preserve_prompts": "testbed", "preserve_scale": 10.0}


def _expanded() -> list[str]:
    path = "runs/robust/expand_triangle.json"  # written by bench/robust_expand.py
    return [w for w in json.load(open(path))["found"] if w != "triangle"]


def ablation() -> dict[str, list[tuple[str, dict[str, Any], int]]]:
    """The experiments by group (built on demand: the expansion group reads bench/robust_expand.py's output)."""
    expanded = _expanded() if Path("runs/robust/expand_triangle.json").is_file() else ["<run robust_expand.py>"]
    return {
    "captions": [  # the concept phrasings alone, then templated captions, with templated neighbours preserved
        ("bare phrases → ' ', ps 1", {"concept_texts": SYN, "neighbours": NB}, 0),
        ("bare phrases → ' ', ps 10", {"concept_texts": SYN, "neighbours": NB, "preserve_scale": 10.0}, 0),
        ("templated captions → template with ' ', ps 1", {"concept_texts": SYN, "templates": TEMPLATES,
                                                          "neighbours": NB, "anchor_in_context": True}, 0),
        ("templated captions → template with ' ', ps 10", {"concept_texts": SYN, "templates": TEMPLATES,
                                                           "neighbours": NB, "anchor_in_context": True,
                                                           "preserve_scale": 10.0}, 0),
        ("templated captions, aligned rows → ' '", {"concept_texts": SYN, "templates": TEMPLATES,
                                                    "neighbours": NB, "aligned": True}, 0),
        ("  + 3 iterations", {"concept_texts": SYN, "templates": TEMPLATES, "neighbours": NB, "aligned": True,
                              "keep_captions": False}, 3),
    ],
    "corpus": [  # the model's own caption grammar as erase and preserve sets, and the anchor of each caption
        ("corpus, anchor ' '", {**CORPUS, "concept_texts": SYN}, 0),
        ("corpus, context anchor 'shape'", {**CORPUS, "concept_texts": SYN, "context_anchor": "shape"}, 0),
        ("corpus, context anchor ''", {**CORPUS, "concept_texts": SYN, "context_anchor": ""}, 0),
        ("corpus, context anchor = other shapes", {**CORPUS, "concept_texts": SYN, "context_anchor": NB}, 0),
        ("  + erase scale 10", {**CORPUS, "concept_texts": SYN, "context_anchor": NB, "erase_scale": 10.0}, 0),
        ("  + 2 iterations (no re-imposed captions)", {**CORPUS, "concept_texts": SYN, "context_anchor": NB,
                                                       "keep_captions": False}, 2),
    ],
    "expansion": [  # judge-verified expansion words (bench/robust_expand.py) and iterations
        ("  + 1 iteration, captions re-imposed", {**CORPUS, "concept_texts": SYN, "context_anchor": NB}, 1),
        ("  + expansion words", {**CORPUS, "concept_texts": SYN + expanded, "context_anchor": NB}, 0),
        ("  + expansion words + 1 iteration", {**CORPUS, "concept_texts": SYN + expanded,
                                               "context_anchor": NB}, 1),
        ("  + expansion words + 2 iterations", {**CORPUS, "concept_texts": SYN + expanded,
                                                "context_anchor": NB}, 2),
    ],
    "judged": _judged_group(),
    "striped": _striped_group(),
    }


def _striped_group() -> list[tuple[str, dict[str, Any], int]]:
    """The striped preset's choices (run with ``--concept striped``): mined neighbours and the preserve scale, one
    iteration after the first edit."""
    import yaml

    preset = yaml.safe_load(Path("configs/testbed_striped_robust.yaml").read_text())["model"]["robust"]
    base = {k: v for k, v in preset.items()
            if k not in ("iterations", "stop_concept_rate", "stop_preservation_drop", "mine_neighbours")}
    return [
        ("without mined neighbours + 1", base, 1),
        ("+ 30 mined neighbours (the preset) + 1", {**base, "mine_neighbours": 30}, 1),
        ("+ 100 mined neighbours + 1", {**base, "mine_neighbours": 100}, 1),
        ("without mined neighbours, preserve scale 30 + 1", {**base, "preserve_scale": 30.0}, 1),
    ]


def _judged_group() -> list[tuple[str, dict[str, Any], int]]:
    """The judged implicit prompts (:mod:`rece_lightning.lightning.judged_prompts`) on top of the preset without them, and without the
    expansion words (the shipped preset is the ``+ judged others preserved`` rows)."""
    import yaml

    from rece_lightning.recipes.robust.captions import read_judged, sample_testbed_captions

    preset = yaml.safe_load(Path("configs/testbed_robust_pinned.yaml").read_text())["model"]["robust"]
    base = {k: v for k, v in preset.items()
            if k not in ("iterations", "stop_concept_rate", "stop_preservation_drop", "judged_prompts")}
    judged = preset["judged_prompts"]
    shown, _ = read_judged(judged)
    erased_only = {**base, "erase_prompts": sample_testbed_captions("triangle", 300, with_concept=True) + list(shown)}
    return [
        ("preset without judged prompts + 2", base, 2),
        ("+ judged concept prompts erased + 1", erased_only, 1),
        ("+ judged concept prompts erased + 2", erased_only, 2),
        ("+ judged others preserved (preset) + 1", {**base, "judged_prompts": judged}, 1),
        ("+ judged others preserved (preset) + 2", {**base, "judged_prompts": judged}, 2),
        ("+ judged others preserved (preset) + 3", {**base, "judged_prompts": judged}, 3),
        ("preset without expansion words + 2", {**base, "concept_texts": SYN, "judged_prompts": judged}, 2),
    ]


def inversion_asr(h: Harness, gamma: float = 0.1) -> float:
    """The closed-form inversion attack (``EmbeddingInversion``) on the 96 shipped explicit and implicit prompts:
    the fraction of images of the inverted embeddings that show the concept."""
    targets = [r for r in h.shipped if r["kind"] in ("explicit", "implicit")]
    editor, text = h.module.editor, h.module.text
    text.encode([r["prompt"] for r in targets])
    derived = editor.derive([text.full(r["prompt"]) for r in targets], gamma=gamma)
    editor.apply()
    images = h.module.generate([r["prompt"] for r in targets], [int(r["evaluation_seed"]) for r in targets],
                               prompt_embeds=[e.float() for e in derived])
    return sum(r["is_concept"] for r in h.metric.score(images, targets)) / len(targets)


def removal(h: Harness, ks: tuple[int, ...] = (8, 32, 64)) -> None:
    """Remove instead of remap: after the preset's kept stage (first edit + 2 iterations), ``T' = T (I − Q Qᵀ)`` with
    ``Q`` the ``k`` generalised eigenvectors of (the concept captions' pre-images ``T⁻¹c`` — what the inversion attack
    needs —, the preserved rows ``p`` — what must survive). Prints held-out / shipped rates and the inversion ASR."""
    import yaml

    from rece_lightning.maths.edit_state import EditState

    preset = yaml.safe_load(Path("configs/testbed_robust_pinned.yaml").read_text())["model"]["robust"]
    config = {k: v for k, v in preset.items() if k not in ("iterations", "stop_concept_rate", "stop_preservation_drop")}
    h.reset()
    m = h.module
    recipe = RobustRecipe(m.editor, m.text, m.recipe.concepts, m.recipe.anchors, RobustConfig(**config))
    recipe.first_edit()
    recipe.iteration()
    recipe.iteration()
    t = m.editor.maps["to_v"].clone()
    captions = torch.cat([m.text.full(c) for c in recipe.captions])
    preimages = torch.linalg.solve(t, captions.T).T
    preserved = recipe.preserved_rows()
    results = [{"label": "preset, kept rece-2", "heldout": h.measure(h.heldout), "shipped": h.measure(h.shipped),
                "inversion": inversion_asr(h)}]
    d = t.shape[0]
    a = preimages.T @ preimages / len(preimages)
    b = preserved.T @ preserved / len(preserved)
    b = b + 1e-3 * torch.trace(b) / d * torch.eye(d, dtype=b.dtype)
    inv_l = torch.linalg.inv(torch.linalg.cholesky(b))
    _, vectors = torch.linalg.eigh(inv_l @ a @ inv_l.T)
    directions = inv_l.T @ vectors.flip(1)  # largest ratio first
    for k in ks:
        q, _ = torch.linalg.qr(directions[:, :k])
        removed = t @ (torch.eye(d, dtype=t.dtype) - q @ q.T)
        m.editor.restore_snapshot(EditState(maps={"to_k": removed, "to_v": removed}, steps=None))
        results.append({"label": f"  + remove k = {k} directions", "heldout": h.measure(h.heldout),
                        "shipped": h.measure(h.shipped), "inversion": inversion_asr(h)})
    for r in results:
        print(fmt(r), f"inversion {100 * r['inversion']:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="triangle")
    parser.add_argument("--heldout-csv")
    parser.add_argument("--experiment", default="baseline", choices=["baseline", "captions", "corpus", "expansion", "judged", "removal", "striped"])
    parser.add_argument("--shipped", action="store_true", help="also measure the shipped prompts")
    args = parser.parse_args()
    if args.heldout_csv:
        write_csv(heldout_rows(args.concept), args.heldout_csv)
        return
    h = Harness(args.concept)
    if args.experiment == "baseline":
        run(h, "original", lambda m: None)
        run(h, "paper", lambda m: m.erase())
        return
    if args.experiment == "removal":
        removal(h)
        return
    for label, config, iterations in ablation()[args.experiment]:
        run(h, label, robust(RobustConfig(**config), iterations), shipped=args.shipped)


if __name__ == "__main__":
    main()
