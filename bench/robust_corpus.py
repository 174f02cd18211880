"""A judged corpus of implicit prompts for ``recipe: robust`` (``robust.judged_prompts``); the writer is
:mod:`rece_lightning.lightning.judged_prompts` (same options; this script is kept for the commands written in earlier notes).

    python bench/robust_corpus.py --concept striped --out configs/robust/striped_implicit.csv
    python bench/robust_corpus.py --concept triangle --no-anchors --out configs/robust/triangle_implicit.csv
"""

from __future__ import annotations

from rece_lightning.lightning.judged_prompts import main

if __name__ == "__main__":
    main()
