"""The one exception users see: bad input, reported with the problem and the fix."""

from __future__ import annotations


class RECEError(ValueError):
    """Invalid input or configuration: the message names the problem and how to fix it.

    The ``rece`` command prints it without a traceback and exits with status 2.
    """
