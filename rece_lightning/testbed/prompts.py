"""Erasure concepts of the testbed and their evaluation prompt CSVs.

Every shape, colour and pattern of the world is an erasable concept (:data:`TESTBED_CONCEPTS`); the prompt sets of
"triangle" and "striped" are shipped (:data:`CONCEPTS`), those of the other values are generated on first use by the
same deterministic builder (:func:`prompt_csv`, a file under ``$RECE_CACHE_DIR/testbed-prompts``), so
``testbed:<value>`` names a prompt set for every value. A value without an implicit cue in the world's caption grammar
(square, green, blue, purple) has no implicit rows: there is no caption that evokes it without naming it.

Each CSV follows the paper schema (``prompt``, ``evaluation_seed``,
``case_number``) plus ground truth: ``kind`` (explicit / paraphrase / implicit /
neighbour / unrelated), ``concept``, and the intended ``shape``, ``color``,
``pattern``, ``background`` (empty when the prompt leaves it free).

Regenerate the shipped CSVs with ``python -m rece_lightning.testbed.prompts``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from .captions import IMPLICIT_CUES, ImplicitCue, explicit_caption, implicit_caption, scene_for_cue
from .world import ATTRIBUTES, COLORS, SHAPES, Scene, random_scene

PROMPTS_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
CSV_COLUMNS: tuple[str, ...] = (
    "case_number",
    "prompt",
    "evaluation_seed",
    "kind",
    "concept",
    "shape",
    "color",
    "pattern",
    "background",
)
KINDS: tuple[str, ...] = ("explicit", "paraphrase", "implicit", "neighbour", "unrelated")


@dataclass(frozen=True)
class Concept:
    """An erasable concept of the testbed world.

    Attributes:
        name: concept name, also the word used in explicit prompts.
        attribute: the scene attribute it lives in ("shape", "color" or "pattern").
        kind: "object" (a shape), "color" or "style" (a pattern).
    """

    name: str
    attribute: str
    kind: str

    @property
    def csv_path(self) -> str:
        """Path of the shipped prompt CSV (see :func:`prompt_csv` for every value's)."""
        return os.path.join(PROMPTS_DIR, f"{self.name}.csv")

    @property
    def values(self) -> tuple[str, ...]:
        """Every value of the concept's attribute (the concept included)."""
        return ATTRIBUTES[self.attribute]

    def neighbours(self) -> list[str]:
        """The other values of the concept's attribute (its natural neighbours: the other shapes, …)."""
        return [v for v in self.values if v != self.name]

    def implicit_cues(self) -> list[ImplicitCue]:
        """Implicit cues that evoke this concept without naming it."""
        return [c for c in IMPLICIT_CUES if c.fixed.get(self.attribute) == self.name]


_KIND = {"shape": "object", "color": "color", "pattern": "style"}
TESTBED_CONCEPTS: dict[str, Concept] = {
    value: Concept(value, attribute, _KIND[attribute])
    for attribute in ("shape", "color", "pattern")
    for value in ATTRIBUTES[attribute]
}
"""Every erasable value of the world: each shape, colour and pattern."""
CONCEPTS: dict[str, Concept] = {name: TESTBED_CONCEPTS[name] for name in ("triangle", "striped")}
"""The concepts whose prompt CSVs are shipped in :data:`PROMPTS_DIR`."""

N_EXPLICIT = 48
N_PARAPHRASE = 48
N_IMPLICIT = 48
N_NEIGHBOUR = 48
N_UNRELATED = 36


def _row(prompt: str, kind: str, concept: str, scene: Scene, known: set[str], seed: int) -> dict[str, object]:
    return {
        "prompt": prompt,
        "evaluation_seed": seed,
        "kind": kind,
        "concept": concept,
        **{a: (getattr(scene, a) if a in known else "") for a in ("shape", "color", "pattern", "background")},
    }


def _explicit_rows(concept: Concept, rng: np.random.Generator, n: int, heldout: bool) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        cycled = ("shape", SHAPES[i % len(SHAPES)]) if concept.attribute == "color" else ("color", COLORS[i % len(COLORS)])
        scene = random_scene(rng, **{concept.attribute: concept.name, cycled[0]: cycled[1]})
        name_pattern = concept.attribute == "pattern" or rng.random() < 0.6
        name_bg = rng.random() < 0.4
        known = {"shape", "color"} | ({"pattern"} if name_pattern else set()) | ({"background"} if name_bg else set())
        prompt = explicit_caption(scene, rng, heldout=heldout, name_pattern=name_pattern, name_background=name_bg)
        kind = "paraphrase" if heldout else "explicit"
        rows.append(_row(prompt, kind, concept.name, scene, known, int(rng.integers(1_000_000))))
    return rows


def _implicit_rows(concept: Concept, rng: np.random.Generator, n: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cues = concept.implicit_cues()
    if not cues:  # the world has no caption that evokes this value without naming it
        return rows
    for i in range(n):
        cue = cues[i % len(cues)]
        scene = scene_for_cue(cue, rng)
        if "{c}" in cue.template:
            scene = Scene(**{**scene.as_dict(), "color": COLORS[(i // len(cues)) % len(COLORS)]})
        name_bg = "{bg}" in cue.template
        prompt = implicit_caption(cue, scene, rng, name_background=name_bg)
        known = set(cue.fixed) | ({"color"} if "{c}" in cue.template else set())
        known |= {"shape"} if "{s}" in cue.template else set()
        known |= {"background"} if name_bg else set()
        rows.append(_row(prompt, "implicit", concept.name, scene, known, int(rng.integers(1_000_000))))
    return rows


def _neighbour_rows(concept: Concept, rng: np.random.Generator, n: int) -> list[dict[str, object]]:
    """Same colours (and shapes, for a style) with a different value of the concept's attribute."""
    values = concept.neighbours()
    rows = []
    for i in range(n):
        if concept.attribute == "color":
            fixed = {"color": values[i % len(values)], "shape": SHAPES[(i // len(values)) % len(SHAPES)]}
        else:
            fixed = {concept.attribute: values[i % len(values)], "color": COLORS[(i // len(values)) % len(COLORS)]}
        if concept.attribute == "pattern":
            fixed["shape"] = SHAPES[i % len(SHAPES)]
        scene = random_scene(rng, **fixed)
        name_pattern = concept.attribute == "pattern" or rng.random() < 0.6
        known = {"shape", "color"} | ({"pattern"} if name_pattern else set())
        prompt = explicit_caption(scene, rng, heldout=bool(i % 2), name_pattern=name_pattern, name_background=False)
        rows.append(_row(prompt, "neighbour", concept.name, scene, known, int(rng.integers(1_000_000))))
    return rows


def _unrelated_rows(concept: Concept, rng: np.random.Generator, n: int) -> list[dict[str, object]]:
    """Scenes without the concept, including implicit cues of other attributes."""
    rows = []
    others = [
        c
        for c in IMPLICIT_CUES
        if c.fixed.get(concept.attribute, concept.name) != concept.name and "{" not in c.template
    ]
    for i in range(n):
        if i < len(others):
            cue = others[i]
            scene = scene_for_cue(cue, rng)
            prompt = implicit_caption(cue, scene, rng, name_background=False)
            known = set(cue.fixed)
        else:
            while True:
                scene = random_scene(rng)
                if getattr(scene, concept.attribute) != concept.name:
                    break
            known = {"shape", "color", "pattern"}
            prompt = explicit_caption(scene, rng, heldout=bool(i % 2), name_background=False)
        if getattr(scene, concept.attribute) == concept.name:  # pragma: no cover - excluded above
            continue
        rows.append(_row(prompt, "unrelated", concept.name, scene, known, int(rng.integers(1_000_000))))
    return rows


def build_prompt_rows(concept: str | Concept, seed: int = 0) -> list[dict[str, object]]:
    """Deterministically build the evaluation prompt rows of a concept."""
    c = testbed_concept(concept) if isinstance(concept, str) else concept
    rng = np.random.default_rng([seed, len(c.name), sum(map(ord, c.name))])
    rows = (
        _explicit_rows(c, rng, N_EXPLICIT, heldout=False)
        + _explicit_rows(c, rng, N_PARAPHRASE, heldout=True)
        + _implicit_rows(c, rng, N_IMPLICIT)
        + _neighbour_rows(c, rng, N_NEIGHBOUR)
        + _unrelated_rows(c, rng, N_UNRELATED)
    )
    for i, r in enumerate(rows):
        r["case_number"] = i
    return rows


def testbed_concept(name: str) -> Concept:
    """The testbed concept named ``name`` (any shape, colour or pattern).

    Raises:
        RECEError: ``name`` is not a value of the world.
    """
    if name not in TESTBED_CONCEPTS:
        from rece_lightning.errors import RECEError

        raise RECEError(f"{name!r} is not a testbed concept; use a shape, colour or pattern: {sorted(TESTBED_CONCEPTS)}")
    return TESTBED_CONCEPTS[name]


def prompt_csv(concept: str) -> str:
    """Path of a concept's prompt CSV: the shipped file, else the generated one (written atomically under
    ``$RECE_CACHE_DIR/testbed-prompts`` — default ``~/.cache/rece-lightning`` — when missing or different)."""
    c = testbed_concept(concept)
    if c.name in CONCEPTS:
        return c.csv_path
    return generated_csv(f"{c.name}.csv", _csv_text(build_prompt_rows(c)))


def generated_csv(name: str, text: str) -> str:
    """Path of a generated testbed file ``name`` holding ``text``: written atomically under
    ``$RECE_CACHE_DIR/testbed-prompts`` (default ``~/.cache/rece-lightning``) when missing or different."""
    from rece_lightning.files import atomic_path, cache_dir

    path = os.path.join(cache_dir(), "testbed-prompts", name)
    if not os.path.isfile(path) or _read_text(path) != text:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return path


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def _csv_text(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_prompt_csv(concept: str, path: str | None = None, seed: int = 0) -> str:
    """Write a concept's prompt CSV (default: the shipped location); return its path."""
    path = path or testbed_concept(concept).csv_path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in build_prompt_rows(concept, seed):
            writer.writerow(row)
    os.replace(tmp, path)
    return path


def load_prompts(concept: str, path: str | None = None) -> list[dict[str, str]]:
    """Read a concept's prompt CSV as a list of dict rows (all values as strings)."""
    with open(path or prompt_csv(concept), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str] | None = None) -> None:
    """Regenerate the shipped prompt CSVs."""
    ap = argparse.ArgumentParser(description="Write the testbed prompt CSVs.")
    ap.add_argument("--out", default=PROMPTS_DIR)
    args = ap.parse_args(argv)
    for name in CONCEPTS:
        print(write_prompt_csv(name, os.path.join(args.out, f"{name}.csv")))


if __name__ == "__main__":
    main()
