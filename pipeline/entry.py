"""The ``contrastgen`` console script. Light on purpose: it imports nothing but :mod:`pipeline.stop` (the standard
library) before it decides, so a Ctrl-C in the first second of a run is a stop, not a traceback from inside an
import. ``generate`` and ``train`` run supervised (:func:`pipeline.stop.supervise`); every other command, and a
worker, goes on to :func:`pipeline.cli.main`. ``python -m pipeline.cli`` (torchrun's ranks, tests) is never
supervised."""

from __future__ import annotations

import gc
import os
import sys

SUPERVISED_COMMANDS = ("generate", "train")  # long runs: a stop is forwarded to a worker in its own session


def main() -> int:
    from pipeline import stop

    command = next((x for x in sys.argv[1:] if not x.startswith("-")), None)
    if os.environ.get(stop.SUPERVISED):
        stop.install()  # the worker: a signal from here on is a stop, before any heavy import
    elif command in SUPERVISED_COMMANDS:
        return stop.supervise(sys.argv[1:])
    from pipeline.cli import main as cli_main

    code = cli_main()
    if stop.asked() is not None:  # a stopped run exits now: no exit-time collection of a run's objects (seconds)
        gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
