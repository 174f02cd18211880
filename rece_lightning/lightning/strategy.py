"""DDP for a closed-form method: processes shard the prompts, but the model is never wrapped for gradients.

RECE trains nothing, so PyTorch's ``DistributedDataParallel`` (which refuses modules without trainable
parameters) has no job; every process runs the same deterministic closed-form edit and its own shard of the
validation prompts, and the metric callbacks gather the results. Registered as ``rece_ddp``; the ``rece`` command
also uses it for ``--trainer.strategy ddp``.

CPU threads: several processes on one machine each using every core oversubscribe the CPU (runs slow down many
times over). :func:`configure_threads` gives each process ``RECE_NUM_THREADS`` intra-op threads when that variable is
set, and otherwise, under DDP on the CPU, an equal share of the cores available to the job (``OMP_NUM_THREADS``, when
set, is respected).
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from rece_lightning.errors import RECEError

THREADS_ENV = "RECE_NUM_THREADS"
"""Environment variable: intra-op CPU threads per process (the ``rece --threads N`` option sets it)."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or ``taskset``'s share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def requested_threads() -> int | None:
    """The value of ``RECE_NUM_THREADS`` (``None`` when unset or empty).

    Raises:
        RECEError: the value is not a positive integer.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise RECEError(f"{THREADS_ENV}={value!r} (or --threads) must be a positive number of CPU threads per process")
    return threads


def configure_threads(local_processes: int = 1) -> int:
    """Set torch's intra-op threads for one of ``local_processes`` processes sharing this machine; returns the count.

    ``RECE_NUM_THREADS`` wins; otherwise ``OMP_NUM_THREADS`` (when set) is left to torch; otherwise several local
    processes share the available cores equally and a single process keeps torch's default. The choice is exported
    as ``OMP_NUM_THREADS`` so that processes started later (DDP workers) inherit it.
    """
    threads = requested_threads()
    if threads is None and "OMP_NUM_THREADS" not in os.environ and local_processes > 1:
        threads = max(1, available_cores() // local_processes)
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    return torch.get_num_threads()


class ClosedFormDDPStrategy(DDPStrategy):
    """``DDPStrategy`` without the ``DistributedDataParallel`` wrapper (nothing to synchronise: no gradients)."""

    strategy_name = "rece_ddp"

    def setup_environment(self) -> None:
        """Share the CPU cores among the local processes (see :func:`configure_threads`), then set up DDP."""
        if self.root_device.type == "cpu":
            configure_threads(self.num_processes)
        super().setup_environment()

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
