"""Where rece's own lines go: standard output, one stream for every line the project prints while it runs.

Stage lines, progress, the kept stage, exported files and results all go through :func:`say` (a line) and
:func:`show_status` (the progress of the moment): on a terminal the status is one bar redrawn in place, cleared
before a line is said and drawn again after it; when the output is piped each status is a line of its own.
Errors (``rece: error: …``) stay on standard error, as every command-line tool does.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

__all__ = ["is_terminal", "say", "show_status", "stream"]

_lock = threading.RLock()
_status: str | None = None  # the bar drawn on a terminal, if any


def stream() -> TextIO:
    """The stream of rece's lines (looked up at each call: tests and notebooks redirect ``sys.stdout``)."""
    return sys.stdout


def is_terminal() -> bool:
    """Whether :func:`stream` is an interactive terminal (bars) rather than a pipe or file (lines)."""
    try:
        return stream().isatty()
    except (AttributeError, ValueError):
        return False


def say(line: str) -> None:
    """Print one line (flushed), clearing the status bar around it on a terminal."""
    with _lock:
        out = stream()
        if _status is not None and is_terminal():
            out.write("\r\033[K")
        out.write(line + "\n")
        if _status is not None and is_terminal():
            out.write(_status)
        out.flush()


def show_status(text: str | None) -> None:
    """Show the progress of the moment: redrawn in place on a terminal, a line when piped; ``None`` clears it."""
    global _status
    with _lock:
        out = stream()
        if is_terminal():
            out.write("\r\033[K" + (text or ""))
            out.flush()
        elif text is not None:
            out.write(text + "\n")
            out.flush()
        _status = text
