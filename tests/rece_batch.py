"""Run the ``rece`` entry point (:func:`rece_lightning.lightning.cli.main`, what the console script calls) on many command
lines in ONE process, so that dozens of bad-input cases cost one start-up of torch and Lightning instead of one each.

Usage: ``python -m tests.rece_batch CASES.json RESULTS.json``; ``CASES.json`` holds ``[{"argv": [...], "cwd": ...},
...]``; each result is ``{"code", "stdout", "stderr", "seconds"}``. A case that runs longer than ``RECE_BATCH_TIMEOUT``
seconds (default 60) is stopped by SIGALRM and reported with code ``"timeout"``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
import traceback


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout()


def run(argv: list[str], cwd: str | None, timeout: int) -> dict[str, object]:
    from rece_lightning.lightning.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    start = time.perf_counter()
    here = os.getcwd()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exit_info:
                code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
            except _Timeout:
                code = "timeout"
            except BaseException:  # what the console script would print: a traceback, exit 1
                traceback.print_exc()
                code = 1
    finally:
        signal.alarm(0)
        os.chdir(here)
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": round(time.perf_counter() - start, 2)}


if __name__ == "__main__":
    cases_path, results_path = sys.argv[1:3]
    timeout = int(os.environ.get("RECE_BATCH_TIMEOUT", "60"))
    with open(cases_path, encoding="utf-8") as handle:
        cases = json.load(handle)
    results = [run(case["argv"], case.get("cwd"), timeout) for case in cases]
    with open(results_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)
