"""Where a one-stage command's wall time goes: the CLI's phases, timed from inside the process.

    python scripts/cli_phases.py [--out=FILE] [--teardown] job=dpo io.policy=... io.data=... io.output=OUT

runs `python -m rlhf_ops ARGS` in this process with timestamps at: the CLI imported, the pre-check's
start and end, the stage's start (`launcher.run_stage`), the trainer's `fit` start and end, the stage's
end, and the last exit handler (so "exit" - "stage end" is what leaving the process costs). With
`--teardown` the process leaves through the interpreter's normal teardown instead of the CLI's fast
exit, for an A/B. The phases are appended to `--out=FILE` (the first argument; default
cli_phases.txt; not stderr, which the console sends to the step's log while a stage runs), one line
each: `<seconds since the script started> <phase>`.
"""

from __future__ import annotations

import atexit
import sys
import time

T0 = time.perf_counter()


def main() -> None:
    argv = sys.argv[1:]
    teardown = "--teardown" in argv
    argv = [a for a in argv if a != "--teardown"]
    out = "cli_phases.txt"
    if argv and argv[0].startswith("--out="):
        out, argv = argv[0].split("=", 1)[1], argv[1:]
    log = open(out, "a")  # noqa: SIM115 - kept open until the last exit handler

    def mark(what: str) -> None:
        log.write(f"{time.perf_counter() - T0:8.3f} {what}\n")
        log.flush()

    atexit.register(lambda: mark("exit (last exit handler)"))  # registered first: runs last
    import rlhf_ops.cli as cli
    import rlhf_ops.launcher as launcher  # light: no torch

    mark("cli imported")
    def timed(fn, name: str):
        def wrapper(*a, **k):
            mark(f"{name} start")
            try:
                return fn(*a, **k)
            finally:
                mark(f"{name} end")
        return wrapper

    run_stage = launcher.run_stage

    def stage(*a, **k):  # the stage modules (and torch) are imported only now, as in a plain run
        import rlhf_ops.stages.common as common

        common.fit = timed(common.fit, "fit")  # before the stage module's `from .common import fit`
        return run_stage(*a, **k)

    launcher.run_stage = timed(stage, "stage")
    cli.precheck = timed(cli.precheck, "pre-check")
    sys.argv = ["rlhf_ops", *argv]
    cli.main(fast_exit=not teardown)


if __name__ == "__main__":
    main()
