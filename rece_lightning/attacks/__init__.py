"""Red-teaming attacks run by ``rece test``: do erased concepts come back under adversarial prompts?

Each attack turns prompt rows into adversarial inputs (a prompt text, and an embedding for attacks that work in
embedding space); the test stage generates from them with each row's seed and the evaluation callbacks score the
images, so the attack success rate (ASR) uses the same protocol as validation.

Attacks see the model only through :class:`AttackTarget` and never ask which model family they attack: what differs
between families (tokenizers, encoders, the denoiser's loss) is the family's (:mod:`rece_lightning.models.family`), so every
attack runs on SD 1.x/2.x, SDXL and Flux.
"""

from rece_lightning.attacks.base import AdversarialInput, Attack, AttackTarget, Judge, NoAttack
from rece_lightning.attacks.genetic import GeneticSearch
from rece_lightning.attacks.inversion import EmbeddingInversion
from rece_lightning.attacks.ring_a_bell import RingABell
from rece_lightning.attacks.unlearndiff import UnlearnDiffAtk

__all__ = [
    "AdversarialInput",
    "Attack",
    "AttackTarget",
    "EmbeddingInversion",
    "GeneticSearch",
    "Judge",
    "NoAttack",
    "RingABell",
    "UnlearnDiffAtk",
]
