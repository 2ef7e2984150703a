"""KL-penalty control across online-RLHF loop iterations.

Each loop iteration runs one PPO/DPO stage with a coefficient ``beta`` on the
KL(policy || reference) penalty, then measures the KL on frozen eval prompts.
The controllers here decide the beta of the next iteration:

* :class:`FixedKL` keeps beta constant (it only moves when a remedy scales it).
* :class:`AdaptiveKL` is the proportional controller of Ziegler et al. 2019,
  "Fine-Tuning Language Models from Human Preferences" (arXiv:1909.08593, §2.2)::

      error = clip(kl / target - 1, -0.2, 0.2)
      beta *= 1 + error * n_steps / horizon

The schedules (:class:`BetaSchedule`, :class:`LRSchedule`) are deterministic
multipliers over iterations: "start conservative and relax" for beta (the
effective beta of an iteration is ``controller.beta * beta_multiplier(i)``) and
decay for the learning rate. All state is plain JSON so runs can resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KLController",
    "FixedKL",
    "AdaptiveKL",
    "make_kl_controller",
    "BetaSchedule",
    "LRSchedule",
    "SCHEDULE_KINDS",
]

SCHEDULE_KINDS = ("constant", "linear", "cosine")


def _number(owner: str, field: str, value: Any) -> float:
    # bool is an int subclass; a YAML `true` where a number belongs is a config bug.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{field} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}.{field} must be finite, got {value!r}")
    return value


def _int(owner: str, field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{field} must be >= {minimum}, got {value}")
    return value


def _check_kl(owner: str, kl: Any, n_steps: Any) -> tuple[float, int]:
    # A NaN KL would turn beta into NaN forever (NaN propagates through every
    # later multiply), so it is refused loudly instead of absorbed.
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl):
        raise ValueError(f"{owner}.update: kl must be a finite number, got {kl!r}")
    return float(kl), _int(owner, "n_steps", n_steps, 0)


class KLController:
    """Common interface: ``beta``, ``update``, ``scale`` and JSON state."""

    kind: str = ""
    min_beta: float = 0.0
    max_beta: float | None = None
    _beta: float

    @property
    def beta(self) -> float:
        return self._beta

    def _clamp(self, beta: float) -> float:
        beta = max(beta, self.min_beta)
        if self.max_beta is not None:
            beta = min(beta, self.max_beta)
        return beta

    def update(self, kl: float, n_steps: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def scale(self, factor: float) -> None:
        """Multiply beta by ``factor`` (the "raise beta" remedy), within bounds."""
        factor = _number(type(self).__name__, "factor", factor)
        if factor <= 0:
            raise ValueError(f"{type(self).__name__}.scale: factor must be > 0, got {factor}")
        self._beta = self._clamp(self._beta * factor)

    def state_dict(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state_dict(self, d: dict) -> None:
        if d.get("kind") != self.kind:
            raise ValueError(f"state_dict kind {d.get('kind')!r} does not match {self.kind!r}")
        fresh = type(self)._load(d)
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def _load(cls, d: dict) -> "KLController":
        try:
            return cls._from_config(d)
        except KeyError as exc:
            raise ValueError(f"{cls.__name__} state_dict is missing field {exc.args[0]!r}") from None

    @classmethod
    def _from_config(cls, d: dict) -> "KLController":  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, d: dict) -> "KLController":
        """Rebuild a controller; on the base class this dispatches on ``d["kind"]``."""
        kind = d.get("kind")
        target = _KINDS.get(kind) if cls is KLController else cls
        if target is None or target.kind != kind:
            raise ValueError(f"cannot load KL controller of kind {kind!r} with {cls.__name__}")
        return target._load(d)


class FixedKL(KLController):
    """Constant beta; ``update`` only validates its input."""

    kind = "fixed"

    def __init__(self, beta: float, min_beta: float = 0.0, max_beta: float | None = None):
        self.min_beta = _number("FixedKL", "min_beta", min_beta)
        self.max_beta = None if max_beta is None else _number("FixedKL", "max_beta", max_beta)
        beta = _number("FixedKL", "beta", beta)
        if self.min_beta < 0:
            raise ValueError(f"FixedKL.min_beta must be >= 0, got {self.min_beta}")
        if self.max_beta is not None and self.max_beta < self.min_beta:
            raise ValueError("FixedKL.max_beta must be >= min_beta")
        if beta < self.min_beta or (self.max_beta is not None and beta > self.max_beta):
            raise ValueError(f"FixedKL.beta={beta} is outside [min_beta, max_beta]")
        self._beta = beta

    def update(self, kl: float, n_steps: int) -> None:
        _check_kl("FixedKL", kl, n_steps)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "beta": self._beta, "min_beta": self.min_beta,
                "max_beta": self.max_beta}

    @classmethod
    def _from_config(cls, d: dict) -> "FixedKL":
        return cls(d["beta"], d.get("min_beta", 0.0), d.get("max_beta"))

    def __repr__(self) -> str:
        return f"FixedKL(beta={self._beta:.4g})"


class AdaptiveKL(KLController):
    """Proportional KL controller (Ziegler et al. 2019), with hard bounds on beta."""

    kind = "adaptive"
    ERROR_CLIP = 0.2  # the paper's clip: one update can move beta by at most 20% * n/horizon

    def __init__(self, init_beta: float, target: float, horizon: float,
                 min_beta: float = 1e-4, max_beta: float = 10.0):
        self.init_beta = _number("AdaptiveKL", "init_beta", init_beta)
        self.target = _number("AdaptiveKL", "target", target)
        self.horizon = _number("AdaptiveKL", "horizon", horizon)
        self.min_beta = _number("AdaptiveKL", "min_beta", min_beta)
        self.max_beta = _number("AdaptiveKL", "max_beta", max_beta)
        if self.target <= 0:
            raise ValueError(f"AdaptiveKL.target must be > 0, got {self.target}")
        if self.horizon <= 0:
            raise ValueError(f"AdaptiveKL.horizon must be > 0, got {self.horizon}")
        # min_beta > 0: a multiplicative controller stuck at 0 could never recover.
        if self.min_beta <= 0:
            raise ValueError(f"AdaptiveKL.min_beta must be > 0, got {self.min_beta}")
        if self.max_beta < self.min_beta:
            raise ValueError("AdaptiveKL.max_beta must be >= min_beta")
        if not self.min_beta <= self.init_beta <= self.max_beta:
            raise ValueError(f"AdaptiveKL.init_beta={self.init_beta} is outside "
                             f"[{self.min_beta}, {self.max_beta}]")
        self._beta = self.init_beta

    def update(self, kl: float, n_steps: int) -> None:
        kl, n_steps = _check_kl("AdaptiveKL", kl, n_steps)
        error = min(max(kl / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        # The multiplier can go <= 0 when n_steps >> horizon; the clamp keeps beta in bounds.
        self._beta = self._clamp(self._beta * (1.0 + error * n_steps / self.horizon))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "beta": self._beta, "init_beta": self.init_beta,
                "target": self.target, "horizon": self.horizon,
                "min_beta": self.min_beta, "max_beta": self.max_beta}

    @classmethod
    def _from_config(cls, d: dict) -> "AdaptiveKL":
        ctl = cls(d["init_beta"], d["target"], d["horizon"],
                  d.get("min_beta", 1e-4), d.get("max_beta", 10.0))
        ctl._beta = ctl._clamp(_number("AdaptiveKL", "beta", d.get("beta", ctl.init_beta)))
        return ctl

    def __repr__(self) -> str:
        return f"AdaptiveKL(beta={self._beta:.4g}, target={self.target:.4g})"


_KINDS: dict[str, type[KLController]] = {"fixed": FixedKL, "adaptive": AdaptiveKL}
_KWARGS = {"fixed": {"beta", "min_beta", "max_beta"},
           "adaptive": {"init_beta", "target", "horizon", "min_beta", "max_beta"}}


def make_kl_controller(kind: str, **kwargs: Any) -> KLController:
    """Build a controller from config: ``kind`` is "fixed" or "adaptive"."""
    if kind not in _KINDS:
        raise ValueError(f"unknown KL controller kind {kind!r}; expected one of {sorted(_KINDS)}")
    unknown = sorted(set(kwargs) - _KWARGS[kind])
    if unknown:
        raise ValueError(f"unknown field(s) for {kind} KL controller: {', '.join(unknown)}")
    try:
        return _KINDS[kind](**kwargs)
    except TypeError as exc:  # missing required args -> config error, not a crash
        raise ValueError(f"{kind} KL controller: {exc}") from None


def _interp(kind: str, start: float, end: float, iteration: int, iterations: int) -> float:
    # Iterations are 0-based; iteration `iterations - 1` (the last one of the loop)
    # gets exactly `end` and later ones stay there (a 1-iteration schedule: start, then end).
    if kind == "constant":
        return start
    t = min(iteration / max(iterations - 1, 1), 1.0)
    if kind == "linear":
        return start + (end - start) * t
    return start + (end - start) * (1.0 - math.cos(math.pi * t)) / 2.0


def _check_schedule(owner: str, kind: str, iterations: Any) -> None:
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"{owner}.kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    _int(owner, "iterations", iterations, 1)


def _check_iteration(owner: str, iteration: Any) -> int:
    return _int(owner, "iteration", iteration, 0)


@dataclass(frozen=True)
class BetaSchedule:
    """Multiplier on the controller's beta per iteration: start conservative, then relax."""

    kind: str = "constant"
    start_mult: float = 1.0
    end_mult: float = 1.0
    iterations: int = 1

    def __post_init__(self) -> None:
        _check_schedule("BetaSchedule", self.kind, self.iterations)
        for f in ("start_mult", "end_mult"):
            if _number("BetaSchedule", f, getattr(self, f)) <= 0:
                raise ValueError(f"BetaSchedule.{f} must be > 0, got {getattr(self, f)}")

    def beta_multiplier(self, iteration: int) -> float:
        iteration = _check_iteration("BetaSchedule", iteration)
        return _interp(self.kind, self.start_mult, self.end_mult, iteration, self.iterations)

    def effective_beta(self, controller: KLController | float, iteration: int) -> float:
        """The beta an iteration trains with: ``controller.beta * beta_multiplier(iteration)``."""
        beta = controller.beta if isinstance(controller, KLController) else float(controller)
        return beta * self.beta_multiplier(iteration)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate multiplier per iteration (decay across the outer loop)."""

    kind: str = "constant"
    start: float = 1.0
    end: float = 0.1
    iterations: int = 1

    def __post_init__(self) -> None:
        _check_schedule("LRSchedule", self.kind, self.iterations)
        if _number("LRSchedule", "start", self.start) <= 0:
            raise ValueError(f"LRSchedule.start must be > 0, got {self.start}")
        if _number("LRSchedule", "end", self.end) < 0:
            raise ValueError(f"LRSchedule.end must be >= 0, got {self.end}")

    def lr_multiplier(self, iteration: int) -> float:
        iteration = _check_iteration("LRSchedule", iteration)
        return _interp(self.kind, self.start, self.end, iteration, self.iterations)
