"""Start several programs at one moment: `python -m bench.gate BARRIER MODULE [ARGS...]` imports MODULE
(and calls its `prepare()` if it has one), prints `gate: ready`, waits until the file BARRIER exists, then
exits with `MODULE.main(ARGS)`.

`make swarm` starts its eight downloaders this way: Python's start-up (about 0.2 s of CPU each, eight at
once on two cores) then happens before the clock starts, and the downloads really begin together, the
moment the runner creates BARRIER. With MODULE `p2pfs.cli.main` this is exactly `python -m p2pfs ARGS`.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

#: How often BARRIER is looked for (a stat per poll: cheap, and the start skew stays below this).
POLL = 0.002


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m bench.gate BARRIER MODULE [ARGS...]", file=sys.stderr)
        return 2
    barrier, module_name, args = argv[0], argv[1], argv[2:]
    module = importlib.import_module(module_name)
    prepare = getattr(module, "prepare", None)
    if prepare is not None:
        prepare()
    print("gate: ready", flush=True)
    while not os.path.exists(barrier):
        time.sleep(POLL)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
