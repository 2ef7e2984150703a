"""Command line: `python -m rlhf_ops +experiment=NAME [overrides]` (add `-m` for a sweep).

Before Hydra starts, the overrides are composed against the typed schema so that a misspelled key,
a wrong type or an unknown config option fails in ONE line naming it, before any model is built (and
before torch is imported). Sweep overrides (`a=1,2,3`) are checked with each of their values. A single
run's composition is then handed to `@hydra.main` (`_ComposedOnce`): the config is composed once.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import config as _config  # noqa: F401  (registers the schema with the ConfigStore)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# Hydra flags that print or inspect instead of running: leave them to Hydra.
_PASSTHROUGH = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                "--version", "--resolve", "--config-dir", "-cd", "--config-path", "-cp", "--experimental-rerun"}
_FLAGS_WITH_VALUE = {"--config-name", "-cn", "--package", "-p"}


class ConfigError(ValueError):
    """A config problem found before any work starts; printed as one line."""


def split_argv(argv: list[str]) -> tuple[list[str], str] | None:
    """The overrides and the config name, or None when Hydra should handle the arguments itself."""
    overrides, name, skip = [], "config", False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a.split("=")[0] in _PASSTHROUGH:
            return None
        if a in _FLAGS_WITH_VALUE:
            if a in ("--config-name", "-cn") and i + 1 < len(argv):
                name = argv[i + 1]
            skip = True
            continue
        if a.startswith("--config-name="):
            name = a.split("=", 1)[1]
            continue
        if a.startswith("-"):
            continue
        overrides.append(a)
    return overrides, name


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """One override list per distinct value of each sweep axis (not the full product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base, variants = [], []
    for o, text in zip(parsed, overrides):
        if o.is_sweep_override():
            key = o.get_key_element()
            variants.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            base.append(None)
        else:
            base.append(text)
    if not variants:
        return [overrides]
    lists = []
    for axis in range(len(variants)):
        for value in variants[axis]:
            chosen, k = [], 0
            for b in base:
                if b is not None:
                    chosen.append(b)
                else:
                    chosen.append(value if k == axis else variants[k][0])
                    k += 1
            lists.append(chosen)
    return lists


def one_line(exc: BaseException) -> str:
    """The most specific message in an exception chain, on one line, with the key it names."""
    from omegaconf.errors import OmegaConfBaseException

    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            msg = str(e).splitlines()[0]
            kind = type(e).__name__
            if kind in ("ConfigKeyError", "ConfigAttributeError") or "not in struct" in msg:
                hint = (f"; a TRL field not in the schema is added with a +: +{e.full_key}=VALUE"
                        if ".trl." in str(e.full_key) else "")
                return f"unknown config key '{e.full_key}' ({msg}){hint}"
            return f"bad value for '{e.full_key}': {msg}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if "Could not find" in first or "Could not load" in first:
        # Hydra lists the group's options as tab-indented lines under "Available options in ...",
        # then its config search path the same way: keep the options only.
        options = _tabbed_block(str(exc), "Available options")
        if options:
            first += " (available: " + ", ".join(options) + ")"
    elif any(line.startswith("Available options") for line in lines):
        first += " Available options: " + ", ".join(_tabbed_block(str(exc), "Available options"))
    return first


def _tabbed_block(text: str, header: str) -> list[str]:
    """The tab-indented lines that follow the line starting with `header`."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith(header):
            inside = True
        elif inside and line.startswith("\t"):
            out.append(line.strip())
        elif inside:
            break
    return out


# What @hydra.main names the job (hydra.job.name, the job's log file): the module it is declared in.
JOB_NAME = "cli"


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=JOB_NAME):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


class _ComposedOnce:
    """Hydra composing a single run's config once: the pre-check's composition is the one @hydra.main runs.

    Left alone, `@hydra.main` composes twice (once to read `hydra.mode`, once to run with
    `hydra.mode=RUN` appended), after the pre-check's own composition. While this is active, the
    pre-check `remember`s its config: Hydra's mode question is answered from it, and its run
    composition is that config with `hydra.mode=RUN` set as the override would set it (the same
    `ConfigLoaderImpl.load_configuration` built both; its `from_shell` only words error messages).
    tests/test_cli.py checks the handed-over config equals a fresh composition. Anything else (a
    sweep, a config that sets hydra.mode itself) composes as Hydra always does."""

    def __init__(self):
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.hydra import Hydra

        self.loader, self.load = ConfigLoaderImpl, ConfigLoaderImpl.load_configuration
        self.hydra, self.get_mode = Hydra, Hydra.get_mode
        self.cache, self.modes = {}, {}

    def remember(self, config_name: str, overrides: list[str], cfg: DictConfig) -> None:
        from hydra.types import RunMode
        from omegaconf import open_dict

        if cfg.hydra.mode is not None:
            return
        run_cfg = copy.deepcopy(cfg)
        with open_dict(run_cfg):
            run_cfg.hydra.mode = RunMode.RUN
            run_cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
        self.cache[(config_name, (*overrides, "hydra.mode=RUN"), RunMode.RUN)] = run_cfg
        self.modes[(config_name, tuple(overrides))] = None

    def __enter__(self):
        load, get_mode, cache, modes = self.load, self.get_mode, self.cache, self.modes

        def load_configuration(loader, config_name, overrides, run_mode, *args, **kwargs):
            key = (config_name, tuple(overrides), run_mode)
            if key in cache:
                return copy.deepcopy(cache[key])
            return load(loader, config_name, overrides, run_mode, *args, **kwargs)

        def mode(hydra, config_name, overrides):
            key = (config_name, tuple(overrides))
            return modes[key] if key in modes else get_mode(hydra, config_name, overrides)

        self.loader.load_configuration, self.hydra.get_mode = load_configuration, mode
        return self

    def __exit__(self, *exc):
        self.loader.load_configuration, self.hydra.get_mode = self.load, self.get_mode


def precheck(argv: list[str], once: _ComposedOnce | None = None) -> str | None:
    """None if the command line composes; else a one-line error. A single run's composition is handed
    to `once` for @hydra.main to reuse."""
    from hydra.core.global_hydra import GlobalHydra

    parsed = split_argv(argv)
    if parsed is None:
        return None
    overrides, name = parsed
    try:
        from .validate import mark_prechecked, validate_config

        variants = _expand_sweeps(overrides)
        for ov in variants:
            cfg = compose(ov, name)
            validate_config(cfg)
        if once is not None and variants == [overrides] and not {"-m", "--multirun"} & set(argv):
            once.remember(name, overrides, cfg)
            mark_prechecked(cfg)
    except Exception as e:  # noqa: BLE001 - every composition problem becomes one line
        return one_line(e)
    finally:
        GlobalHydra.instance().clear()
    return None


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig):
    from .run import run

    return run(cfg)


def _exit_without_teardown() -> None:
    """End a finished command at once. The interpreter's own teardown (freeing every module, tensor and
    parameter one by one, with garbage collections over torch's and transformers' objects) takes about
    1.2 s here after a stage, longer than some tiny stages' training; the operating system frees the same
    memory in an instant. What must happen before exit still does: the exit handlers libraries registered
    (logging's flush, wandb, datasets' temporary files) run first, and stdout / stderr are flushed. Only
    after success, with no other thread still running (then the normal exit joins it), and not under a
    profiler, a tracer or a debugger, or with RLHF_OPS_NORMAL_EXIT=1."""
    import atexit
    import os
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    if sys.getprofile() is not None or sys.gettrace() is not None or os.environ.get("RLHF_OPS_NORMAL_EXIT"):
        return  # a profiler (python -m cProfile), a tracer or a debugger writes its results after main() returns
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def main(fast_exit: bool = False) -> None:
    """The command line. `fast_exit` (set by `python -m rlhf_ops`): a finished run leaves without the
    interpreter's teardown (see _exit_without_teardown); in-process callers keep the normal return."""
    from . import gcpolicy

    gcpolicy.hold()  # released when the work begins (rlhf_ops.gcpolicy)
    try:
        with _ComposedOnce() as once:
            err = precheck(sys.argv[1:], once)
            if err:
                print(f"rlhf_ops: config error: {err}", file=sys.stderr)
                sys.exit(2)
            hydra_main()
    finally:
        gcpolicy.release()
    if fast_exit:
        _exit_without_teardown()
