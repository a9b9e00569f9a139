"""Runs `bolmo` commands for tests/test_robust_faults.py and kills them with a signal at a given
moment, from inside (a timer thread), so a trial costs the command's time, not a Python start-up.

Usage: python fault_worker.py SPEC.json -> one JSON line per run on stdout. SPEC is a list of
{"args": [...], "signal": N or null, "delay": seconds}. Each run is a fork of this process, which
imports bolmo once and runs no torch operation itself (so forking is safe).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import rich.progress  # noqa: F401 (what the commands import lazily, imported once before forking)
import rich.table  # noqa: F401

import bolmo.checkpoint.convert  # noqa: F401
import bolmo.cli
import bolmo.train.trainer  # noqa: F401


def run(args: list[str], signum: int | None, delay: float) -> dict:
    pid = os.fork()
    if pid == 0:  # the child: the command, with its own death scheduled
        code = 70
        try:
            if signum is not None:
                threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
            code = bolmo.cli.main(args)
        except BaseException as exc:  # anything escaping main is a finding: exit 70 with its name
            print(f"escaped: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"killed_by": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


if __name__ == "__main__":
    for trial in json.loads(open(sys.argv[1]).read()):
        print(json.dumps(run(trial["args"], trial.get("signal"), trial.get("delay", 0.0))), flush=True)
