"""Silence third-party start-up messages that say nothing to rece's users, one message at a time.

Only the messages listed here are filtered (by logger and text, or by warning text); every other warning of
transformers, diffusers, Lightning or torch still shows. :func:`install` is idempotent and is called by the ``rece``
command before anything is loaded, and by :func:`rece_lightning.testbed.load_testbed_pipeline`.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger name, pattern): a record created by exactly this logger whose message matches is dropped
LOG_NOISE: tuple[tuple[str, str], ...] = (
    # transformers without torchvision falls back to its PIL image processors (diffusers imports them; unused here)
    ("transformers.utils.import_utils", r"requires torchvision \(not installed\); falling back to `\w+Pil`"),
    # the testbed's MiniLM text encoder is a BertModel checkpoint whose unused pooler is reported as UNEXPECTED
    # (a report that also lists MISSING or MISMATCHED keys still shows)
    ("transformers.modeling_utils", r"(?s)^(?!.*(MISSING|MISMATCH)).*BertModel LOAD REPORT.*pooler\.dense\."),
    # the testbed pipeline uses a BERT text encoder in a StableDiffusionPipeline on purpose
    ("diffusers.pipelines.pipeline_utils",
     r"Expected types for text_encoder: .* got <class 'transformers\.models\.bert\.modeling_bert\.BertModel'>"),
    # Lightning's advertisement for its cloud logger and model registry (rank_zero_info of either package)
    ("lightning.pytorch.utilities.rank_zero", r"^💡 Tip: For seamless cloud"),
    ("lightning.fabric.utilities.rank_zero", r"^💡 Tip: For seamless cloud"),
    # rece fit runs one epoch per stage: reaching max_epochs is the normal end, told by rece's own stage lines
    ("lightning.pytorch.utilities.rank_zero", r"^`Trainer.fit` stopped: `max_epochs=\d+` reached"),
)

# warning messages (regular expressions matched at the start of the message)
WARNING_NOISE: tuple[str, ...] = (
    # Lightning 2.6 calls a torch._pytree API that torch 2.13 deprecates; nothing a user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # resuming into another folder: the message is about Lightning's top-k bookkeeping, rece resumes in place
    r"The dirpath has changed from",
    # a resumed rece fit writes into its own checkpoints folder (new runs always get a new, empty folder)
    r"Checkpoint directory .* exists and is not empty",
    # rece validate/test/predict use a checkpoint written by rece fit whose ModelCheckpoint callbacks are not needed
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
    # the frozen diffusion model is in eval mode on purpose, and closed-form steps use no data workers
    r".*module\(s\) in eval mode",
    r".*does not have many workers",
    # tqdm.auto in a notebook without ipywidgets (diffusers imports it; rece draws no bar there)
    r"IProgress not found",
)


class _DropMessages(logging.Filter):
    """Drop records whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


_installed = False


def install() -> None:
    """Install the log filters (once, on the loggers that create the messages) and the warning filters (again on
    every call: ``warnings.catch_warnings`` blocks, e.g. test runners, reset them)."""
    global _installed
    if not _installed:
        _installed = True
        by_logger: dict[str, list[str]] = {}
        for name, pattern in LOG_NOISE:
            by_logger.setdefault(name, []).append(pattern)
        for name, patterns in by_logger.items():
            logging.getLogger(name).addFilter(_DropMessages(patterns))
    for pattern in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def disable_loading_bars() -> None:
    """Turn off the tqdm bars that diffusers and transformers draw while loading weights (used when the output is
    not a terminal, where each redraw becomes a line)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
