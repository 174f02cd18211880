"""A TensorBoard custom-scalars layout that draws each erasure metric and its preservation metric on one chart.

RECE is a trade-off: the concept must go and everything else must stay. With this layout the "Custom Scalars"
tab of TensorBoard shows, per pair, both curves over the stages of ``rece fit`` (epoch = stage).
"""

from __future__ import annotations

import lightning as L


class TradeoffLayout(L.Callback):
    """Register the erasure/preservation chart layout with the TensorBoard logger at the start of a run.

    Args:
        pairs: chart title → metric names drawn together, e.g.
            ``{"nudity vs CLIP score": ["val/nudity_rate", "val/clip_score"]}``.
        category: the layout's section title.
    """

    def __init__(self, pairs: dict[str, list[str]], category: str = "erasure vs preservation") -> None:
        self.pairs, self.category = pairs, category

    def layout(self) -> dict[str, dict[str, list]]:
        """The ``SummaryWriter.add_custom_scalars`` layout: one multiline chart per pair (tags as regexes)."""
        return {self.category: {title: ["Multiline", [f"^{t}$" for t in tags]] for title, tags in self.pairs.items()}}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_custom_scalars"):
            experiment.add_custom_scalars(self.layout())
