"""DDP for a closed-form method: processes shard the prompts, but the model is never wrapped for gradients.

RECE trains nothing, so PyTorch's ``DistributedDataParallel`` (which refuses modules without trainable
parameters) has no job; every process runs the same deterministic closed-form edit and its own shard of the
validation prompts, and the metric callbacks gather the results. Registered as ``rece_ddp``; the ``rece`` command
also uses it for ``--trainer.strategy ddp``.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class ClosedFormDDPStrategy(DDPStrategy):
    """``DDPStrategy`` without the ``DistributedDataParallel`` wrapper (nothing to synchronise: no gradients)."""

    strategy_name = "rece_ddp"

    def configure_ddp(self) -> None:
        """Keep the LightningModule unwrapped; the process group is still set up by the parent class."""


def register(name: str = ClosedFormDDPStrategy.strategy_name, override: bool = False) -> None:
    """Make ``name`` select :class:`ClosedFormDDPStrategy` in ``Trainer(strategy=name)``."""
    if override or name not in StrategyRegistry:
        StrategyRegistry.register(
            name, ClosedFormDDPStrategy, description="DDP without gradient synchronisation", override=True,
            start_method="popen",
        )


register()
