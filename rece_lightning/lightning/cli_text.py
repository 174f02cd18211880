"""The ``rece`` command's words: help texts, one-line usage messages, the results table and the resume line."""

from __future__ import annotations

import errno
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from rece_lightning.artefacts.checks import MAX_EPOCHS_MESSAGE, one_line, shown_path

__all__ = ["DISK_FULL", "MAIN_HELP", "SUBCOMMAND_HELP", "disk_full_message", "own_options",
           "main_help", "print_results", "resume_command", "split_subcommand", "subcommand_of", "usage_message"]

MAIN_HELP = """\
Erase a concept from a Stable Diffusion model with RECE (closed-form edits of the cross-attention keys and values,
ECCV 2024) and measure that it is gone.

  rece fit       erase: one stage per epoch, validated after each one: original (the unedited model), uce (the first
                 closed-form edit), rece-1 ... rece-N (model.rece.iterations RECE iterations); writes checkpoints,
                 TensorBoard logs and the exported edit to <trainer.default_root_dir>/lightning_logs/version_N
  rece validate  evaluate the base model, or the edit of --ckpt_path, on data.val_prompts
  rece test      red-team: run model.attacks on data.test_prompts; attack success rate per attack
  rece predict   generate the images of data.predict_prompts
  rece report    print one table of run folders: stages x metrics (attack success rates of rece test runs), the
                 kept stage marked (rece report RUN [RUN ...] [--metrics PATTERN ...])

Every subcommand also takes --debug (or RECE_DEBUG=1: show the traceback of an error) and --threads N (or
RECE_NUM_THREADS=N: CPU threads per process). Example: rece fit --config configs/testbed.yaml"""

SUBCOMMAND_HELP = {
    "fit": (
        "erase: original, uce, rece-1 ... rece-N, one stage per epoch, each validated",
        """\
Erase model.concepts: one closed-form stage per epoch, each followed by a validation on data.val_prompts:
  original   the unedited model (the baseline; --model.validate_original false skips it)
  uce        the first edit (UCE: each concept's tokens mapped to its anchor, model.uce)
  rece-1 ... RECE iterations (model.rece.iterations): derive the embedding that still regenerates the concept, erase it
The number of stages follows from model.rece.iterations (model.robust.iterations under model.recipe robust) and
model.validate_original (trainer.max_epochs is set from them). Writes <trainer.default_root_dir>/lightning_logs/version_N: checkpoints/, eval/<stage>/, export/ and the
TensorBoard logs. An interrupted run resumes into a new version folder: rece fit <same arguments> --ckpt_path
<run>/checkpoints/<last stage>.ckpt (Ctrl-C and SIGTERM print this command; another run's checkpoint is refused).""",
    ),
    "validate": (
        "evaluate: generate data.val_prompts and score them with the metric callbacks",
        """\
Evaluate a model: generate the images of data.val_prompts (each row with its own seed) and score them with the
metric callbacks. Evaluates the base model (model.pretrained), or the edit of --ckpt_path (a checkpoint of rece fit,
restored onto the base model). Writes <trainer.default_root_dir>/lightning_logs/validate-<checkpoint> (or
validate-original).""",
    ),
    "test": (
        "red-team: run model.attacks on data.test_prompts, attack success rate per attack",
        """\
Red-team a model: run every attack of model.attacks on data.test_prompts, generate from what each attack found and
report the attack success rate per attack (test/<attack>/asr) with the metric callbacks. Attacks the base model, or
the edit of --ckpt_path. Writes <trainer.default_root_dir>/lightning_logs/test-<checkpoint> (or test-original).""",
    ),
    "predict": (
        "generate: the images of data.predict_prompts",
        """\
Generate the images of data.predict_prompts (each row with its own seed) with the base model or the edit of
--ckpt_path; saves them under model.generation.image_dir or <trainer.default_root_dir>/images.""",
    ),
}

def main_help() -> str:
    """``rece --help``: what the command does and one line per subcommand (each has its own ``--help``)."""
    width = max(len(name) for name in SUBCOMMAND_HELP)
    lines = [f"  {name:<{width}}  {short}" for name, (short, _) in SUBCOMMAND_HELP.items()]
    return "\n".join([f"usage: rece [-h] {{{','.join(SUBCOMMAND_HELP)}}} ...", "", MAIN_HELP, "", "subcommands "
                      "(rece <subcommand> --help for its options):", *lines])


def split_subcommand(argv: list[str]) -> tuple[str, list[str]]:
    """The subcommand (the first argument) and the arguments that follow it.

    Raises:
        RECEError: no subcommand, an unknown one, or options before it.
    """
    from rece_lightning.errors import RECEError

    choices = ", ".join(f"rece {name}" for name in SUBCOMMAND_HELP)
    if not argv:
        raise RECEError(f"no subcommand: use {choices} (see rece --help)")
    first = argv[0]
    if first in SUBCOMMAND_HELP:
        return first, argv[1:]
    named = subcommand_of(argv)
    if named is not None:
        raise RECEError(f"options go after the subcommand: rece {named} {shlex.join(a for a in argv if a != named)} "
                        "(see rece --help)")
    if first.startswith("-"):
        raise RECEError(f"no subcommand before {first}: use {choices} (see rece --help)")
    raise RECEError(f"invalid choice: {first!r}; use {choices} (see rece --help)")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Write errors that mean "no room": a full disk, a quota, a file-size limit."""


def disk_full_message(err: BaseException) -> str:
    """A failed write for lack of room, as one line naming the file and the fix."""
    where = getattr(err, "filename", None)
    reason = getattr(err, "strerror", None) or "the write failed"
    return (f"could not write {where or 'the run'}: no room left ({reason}); free disk space or choose another "
            "trainer.default_root_dir, then run the command again (completed stages can be resumed)")


def resume_command(argv: list[str] | None, ckpt: Path) -> str:
    """The user's ``rece fit`` command line with ``--ckpt_path`` set to ``ckpt``."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        kept.append(arg)
    return shlex.join(["rece", *kept, "--ckpt_path", shown_path(ckpt)])


def print_results(results: list[dict[str, Any]], subcommand: str) -> None:
    """The metrics of ``rece validate``/``rece test``, one per line with the full name (any terminal width)."""
    merged: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            merged[key.split("/dataloader_idx_")[0]] = float(value)
    if not merged:
        return
    width = max(len(k) for k in merged)
    print(f"rece {subcommand}: results")
    for key in sorted(merged):
        print(f"  {key:<{width}}  {merged[key]:.6g}")
    sys.stdout.flush()


def own_options(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """Remove ``--debug`` and ``--threads N`` (allowed anywhere on the line) from ``argv``."""
    rest: list[str] = []
    debug, threads = False, None
    it = iter(argv)
    for arg in it:
        if arg == "--debug":
            debug = True
        elif arg == "--threads":
            threads = next(it, "")
        elif arg.startswith("--threads="):
            threads = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, debug, threads


def subcommand_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if any."""
    return next((a for a in argv if a in SUBCOMMAND_HELP), None)


def usage_message(message: str, argv: list[str]) -> str:
    """A jsonargparse error as one line that names the fix."""
    text = one_line(message)
    stages = re.search(r"((?:rece|robust)\.iterations must be .*?, got \S+?)(?=['\"]|$| )", text)
    if stages:  # a bad iteration count, reported by the link that sets trainer.max_epochs from the stages
        return stages.group(1)
    if "trainer.max_epochs" in text:
        return MAX_EPOCHS_MESSAGE
    if '"subcommand"' in text and "not provided" in text:
        return "no subcommand: use rece fit, rece validate, rece test or rece predict (see rece --help)"
    subcommand = subcommand_of(argv)
    return f"{text} (see rece {subcommand} --help)" if subcommand else f"{text} (see rece --help)"
