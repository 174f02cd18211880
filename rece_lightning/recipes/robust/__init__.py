"""The opt-in robust recipe (``recipe: robust``), split by idea:

* :mod:`.config` — its settings (``model.robust``) and its stopping rule (:meth:`RobustConfig.selection_rule`);
* :mod:`.captions` — the caption sets it erases and preserves (the concept *in context*);
* :mod:`.expansion` — concept expansion scored in the text encoder's and the K/V output space;
* :mod:`.auto` — what it finds inside a run when a setting says ``auto``;
* :mod:`.recipe` — its iterations (:class:`RobustRecipe`).
"""

from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.robust.recipe import RobustRecipe

__all__ = ["RobustConfig", "RobustRecipe"]
