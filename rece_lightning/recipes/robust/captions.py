"""The robust recipe's caption sets: templates filled with phrases, captions from the testbed's grammar or a prompt
CSV, judged-prompt files, and phrase replacement (the concept erased *in context*).
"""

from __future__ import annotations

from collections.abc import Sequence

from rece_lightning.artefacts.prompts import read_prompts
from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv


def fill(templates: Sequence[str], phrases: Sequence[str]) -> list[str]:
    """Every template filled with every phrase, in order, without duplicates."""
    return list(dict.fromkeys(" ".join(t.format(p).split()) for p in phrases for t in templates))


def sample_testbed_captions(concept: str, n: int, *, with_concept: bool, seed: int = 0) -> list[str]:
    """``n`` captions of the testbed's training grammar (explicit templates only, no implicit cue), each showing
    the concept (``with_concept``) or a scene without it — the testbed's counterpart of a caption corpus."""
    import numpy as np

    from rece_lightning.testbed.captions import explicit_caption
    from rece_lightning.testbed.prompts import TESTBED_CONCEPTS
    from rece_lightning.testbed.world import random_scene

    if concept not in TESTBED_CONCEPTS:
        raise RECEError(f"{concept!r} is not a testbed shape, colour or pattern")
    attribute = TESTBED_CONCEPTS[concept].attribute
    rng = np.random.default_rng([seed, sum(map(ord, concept)), int(with_concept)])
    out: list[str] = []
    while len(out) < n:
        scene = random_scene(rng, **({attribute: concept} if with_concept else {}))
        if not with_concept and getattr(scene, attribute) == concept:
            continue
        out.append(explicit_caption(scene, rng, name_pattern=attribute == "pattern" or rng.random() < 0.7,
                                    name_background=rng.random() < 0.5))
    return list(dict.fromkeys(out))


def caption_prompts(source: str | list[str], concept: str, n: int, *, with_concept: bool, seed: int = 0) -> list[str]:
    """The texts of ``erase_prompts``/``preserve_prompts``: a list, a prompt CSV (read by
    :func:`rece_lightning.artefacts.prompts.read_prompts`, the first ``n`` non-empty prompts; 0 = all) or ``"testbed"``
    (:func:`sample_testbed_captions`)."""
    if isinstance(source, list):
        return list(source)
    if source == "testbed":
        return sample_testbed_captions(concept, n, with_concept=with_concept, seed=seed)
    prompts = [row["prompt"] for row in read_prompts(source, seeds=False) if row["prompt"]]
    return prompts[:n] if n else prompts


def read_judged(path: str) -> tuple[dict[str, str | None], list[str]]:
    """``({prompt that shows the concept: its anchor or None}, [the other prompts])`` of a judged-prompt CSV (columns
    ``prompt``, ``shows_concept`` and optionally ``anchor``)."""
    columns, rows = read_csv(path, "robust.judged_prompts")
    if not {"prompt", "shows_concept"} <= set(columns):
        raise RECEError(f"robust.judged_prompts: {path} needs the columns 'prompt' and 'shows_concept' (0 or 1)")
    bad = [r["shows_concept"] for r in rows if r["shows_concept"] not in ("0", "1")]
    if bad:
        raise RECEError(f"robust.judged_prompts: {path}: shows_concept must be 0 or 1, got {bad[0]!r}")
    shown = {r["prompt"]: (r.get("anchor") or "").strip() or None
             for r in rows if r["shows_concept"] == "1" and r["prompt"].strip()}
    other = [r["prompt"] for r in rows if r["shows_concept"] == "0" and r["prompt"].strip()]
    return shown, other


def replace_phrase(prompt: str, phrases: Sequence[str], replacement: str) -> str | None:
    """``prompt`` with its longest occurrence of one of ``phrases`` replaced (word-bounded), or ``None``."""
    import re

    for phrase in sorted(phrases, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", re.IGNORECASE)
        if pattern.search(prompt):
            return " ".join(pattern.sub(replacement, prompt, count=1).split())
    return None
