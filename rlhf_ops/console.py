"""A console a person can read: what the libraries print during a step goes to that step's log file.

While a step runs (`begin(path)` ... `end()`, or `with captured(path):`), file descriptors 1 and 2
point at its log file, so everything TRL, transformers, datasets, DeepSpeed, accelerate, wandb and
any subprocess (`accelerate launch` workers) print lands there: progress bars, per-step loss
dicts, model load reports, warnings. The orchestrator writes its own lines with `echo`, to the
terminal saved before the redirection; its own warnings (loggers `rlhf_ops.*`, WARNING and up)
reach the terminal too. Library log records and Python `warnings` go to the log file through the
`logging` module, which also works where there is no real file descriptor to redirect (pytest's
capsys, a notebook): then only the descriptors are left alone.

`configure(verbose=True)` (config key `verbose`) turns all of this off: everything prints as is.
A step that raises leaves its traceback at the end of its log, and `failed_log(exc)` names that log
for the one-line error of rlhf_ops.run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Iterator

_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
_OURS = ("rlhf_ops", "__main__")

_enabled = True
_step: "_Step | None" = None
_failed_log: tuple[Path, BaseException | None] | None = None  # (log, the exception that failed its step)


def configure(verbose: bool) -> None:
    """verbose=True: no redirection at all (everything on the console, as the libraries print it)."""
    global _enabled, _failed_log
    _enabled = not verbose
    _failed_log = None


def _real_fds() -> bool:
    # Redirect only when sys.stdout / sys.stderr really are fds 1 and 2: under pytest's capture or in a
    # notebook they are other objects, and moving fds 1 and 2 would not move what they write.
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


class _OursOnly(logging.Filter):
    """On the terminal during a step: the orchestrator's own warnings and errors, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in _OURS and record.levelno >= logging.WARNING


class _Step:
    def __init__(self, path: Path, title: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.log: IO[str] = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.log.write(f"===== {title or path.stem}: started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n")
        _flush_std()
        self.saved: tuple[int, int] | None = None
        self.terminal: IO[str] = sys.stdout
        self.line_buffered = None
        fds = _real_fds()
        if fds:
            self.saved = (os.dup(1), os.dup(2))
            self.terminal = open(os.dup(self.saved[0]), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8",
                                 errors="replace")
        self._route_logging()
        if fds:  # last, so that nothing above can fail with the fds moved
            os.dup2(self.log.fileno(), 1)
            os.dup2(self.log.fileno(), 2)
            # A pipe or file makes sys.stdout block-buffered; line buffering keeps the log in order.
            with contextlib.suppress(Exception):
                self.line_buffered = sys.stdout.line_buffering
                sys.stdout.reconfigure(line_buffering=True)

    def _route_logging(self) -> None:
        root = logging.getLogger()
        self.handler = logging.StreamHandler(self.log)
        self.handler.setFormatter(logging.Formatter(_FORMAT))
        # Console handlers on the root (Hydra's, basicConfig's; not file handlers, nor pytest's caplog,
        # which are subclasses) keep only our warnings, drawn on the real terminal.
        self.filtered = [(h, h.stream) for h in root.handlers if _is_console(h)]
        self.filter = _OursOnly()
        for h, _ in self.filtered:
            h.addFilter(self.filter)
            if self.saved is not None:
                h.setStream(self.terminal)
        root.addHandler(self.handler)
        # Libraries that print through a console handler of their own and do not propagate
        # (transformers, datasets, DeepSpeed): that handler is swapped for the log file's.
        self.swapped = []
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger) and not lg.propagate and name.split(".")[0] not in _OURS:
                consoles = [h for h in lg.handlers if _is_console(h)]
                if consoles:
                    for h in consoles:
                        lg.removeHandler(h)
                    lg.addHandler(self.handler)
                    self.swapped.append((lg, consoles))
        logging.captureWarnings(True)  # `warnings` -> logger py.warnings -> the root -> the log file

    def close(self, failed: bool) -> None:
        if failed:
            self.log.write(f"===== failed {time.strftime('%Y-%m-%d %H:%M:%S')}:\n{traceback.format_exc()}")
        _flush_std()  # what the libraries left in Python's buffers belongs to the log
        logging.captureWarnings(False)
        for lg, consoles in self.swapped:
            lg.removeHandler(self.handler)
            for h in consoles:
                lg.addHandler(h)
        for h, stream in self.filtered:
            h.removeFilter(self.filter)
            if self.saved is not None:
                h.setStream(stream)
        logging.getLogger().removeHandler(self.handler)
        if self.saved is not None:
            if self.line_buffered is not None:
                with contextlib.suppress(Exception):
                    sys.stdout.reconfigure(line_buffering=self.line_buffered)
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            for fd in self.saved:
                os.close(fd)
            self.terminal.close()
        self.log.close()


def _is_console(h: logging.Handler) -> bool:
    return type(h) is logging.StreamHandler  # exactly: FileHandler and pytest's handlers are subclasses


def _flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()


def begin(path: str | Path, title: str = "") -> None:
    """Send library output to `path` (appended) until `end()`; a step still open is ended first."""
    global _step
    end()
    if _enabled:
        _step = _Step(Path(path), title)


def end(failed: bool = False) -> None:
    """Restore the console (idempotent). failed=True, inside an `except`: the traceback goes to the log
    and the log's path is kept for the error line."""
    global _step, _failed_log
    step, _step = _step, None
    if step is None:
        return
    if failed:
        _failed_log = (step.path, sys.exc_info()[1])
    step.close(failed)


@contextlib.contextmanager
def captured(path: str | Path, title: str = "") -> Iterator[None]:
    """`begin(path)` ... `end()` around a block, restoring the console on any exception (Ctrl-C too).
    Inside a step already open it changes nothing: the output goes to that step's log."""
    if _step is not None:
        yield
        return
    begin(path, title)
    try:
        yield
    except BaseException:
        end(failed=True)
        raise
    end()


def current_log() -> Path | None:
    return _step.path if _step else None


def failed_log(exc: BaseException) -> Path | None:
    """The log of the step that `exc` (or the exception it was raised from) failed, if any."""
    if _failed_log is None:
        return None
    path, failed_with = _failed_log
    for _ in range(20):  # the chain of causes, as far as it is reasonable to look
        if exc is None or exc is failed_with:
            return path if exc is not None else None
        exc = exc.__cause__ or exc.__context__
    return None


def log_file() -> IO[str] | None:
    """The open log file of the current step, e.g. for a subprocess's stdout/stderr."""
    return _step.log if _step else None


def echo(line: str) -> None:
    """One line of the orchestrator's own, on the terminal whether or not a step is redirected."""
    out = _step.terminal if _step else sys.stdout
    print(line, file=out, flush=True)


def tqdm_kwargs() -> dict:
    """Arguments for a progress bar of ours: drawn on the terminal, and only if that is a TTY (a bar
    in a CI log or a pipe is noise). Outside a step, tqdm's defaults."""
    if _step is None:
        return {}
    term = _step.terminal
    try:
        tty = term.isatty()
    except (AttributeError, ValueError):
        tty = False
    # position=0: tqdm places bars by all the bars of the process, the trainer's (in the log) included.
    return {"file": term, "position": 0} if tty else {"disable": True}


__all__ = ["configure", "begin", "end", "captured", "current_log", "failed_log", "log_file", "echo", "tqdm_kwargs"]
