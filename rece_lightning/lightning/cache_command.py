"""``rece cache info|clear`` and the ``--no-cache`` option (the evaluation cache: :mod:`rece_lightning.artefacts.eval_cache`).

``rece cache`` is answered before any LightningCLI is built (nothing else is imported); ``--no-cache`` anywhere on a
``rece`` command line sets ``RECE_CACHE=0`` for the run (and its DDP processes, which inherit the environment).
"""

from __future__ import annotations

import argparse
import os

from rece_lightning.artefacts.eval_cache import CACHE_ENV, EvalCache, cache_enabled

__all__ = ["NO_CACHE", "cache_command", "strip_no_cache"]

NO_CACHE = "--no-cache"


def strip_no_cache(argv: list[str]) -> list[str]:
    """``argv`` without ``--no-cache``; when it was there, the evaluation cache is turned off (``RECE_CACHE=0``)."""
    if NO_CACHE in argv:
        os.environ[CACHE_ENV] = "0"
    return [a for a in argv if a != NO_CACHE]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def cache_command(argv: list[str]) -> int:
    """Run ``rece cache <info|clear>``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rece cache", description="Show or empty the evaluation cache "
                                     "($RECE_CACHE_DIR, default ~/.cache/rece-lightning; RECE_CACHE=0 or --no-cache "
                                     "turns it off for a run).")
    parser.add_argument("action", choices=("info", "clear"), help="info: where it is and what it holds; clear: "
                        "delete every entry")
    args = parser.parse_args(argv)
    cache = EvalCache()
    if args.action == "clear":
        removed, size = cache.clear()
        print(f"rece: cache cleared: {removed} entries ({_size(size)}) removed from {cache.root}")
        return 0
    info = cache.info()
    state = "on" if cache_enabled() else f"off ({CACHE_ENV}=0)"
    print(f"rece: evaluation cache at {info['root']} ({state}): {info['entries']} entries, {_size(info['bytes'])}")
    for kind, numbers in sorted(info["kinds"].items()):
        print(f"  {kind}: {numbers['entries']} entries, {_size(numbers['bytes'])}")
    return 0
