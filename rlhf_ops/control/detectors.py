"""Reward-hacking and collapse detectors over per-iteration eval metrics.

Each loop iteration evaluates the new policy on frozen prompts and produces a
record such as ``{"iteration", "gold", "proxy", "kl", "entropy", "length",
"repetition", "disagreement", "win_rate"}``. A detector compares that record
with the *baseline*, the last ACCEPTED record (the last known-good state; for
the first iteration the SFT/initial policy), and returns a :class:`Verdict`
carrying the remedy the loop should apply before retrying.

The signals follow the over-optimisation literature: proxy reward rising while
gold reward falls is the signature of Goodhart over-optimisation (Gao et al.
2022, "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760); a
spike in reward-model ensemble disagreement flags samples the RMs were not
trained on (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization", arXiv:2310.02743); length growth without quality gain and
KL blow-up are the common cheap hacks; entropy collapse signals mode collapse.

Detectors never raise on missing or non-finite metrics: they return a skipped
verdict. Non-finite gold/proxy/kl instead make :class:`NonFiniteMetrics` fire,
and its verdict is a veto (the gate rejects regardless of the vote mode).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["REMEDIES", "Verdict", "Detector", "NonFiniteMetrics", "ProxyUpGoldDown",
           "DisagreementSpike", "KLBudget", "LengthDrift", "EntropyCollapse", "CapabilityAnchors", "ProxyUpOracleDown", "DETECTORS",
           "default_detectors", "build_detectors", "run_detectors", "metric"]

REMEDIES = ("raise_beta", "refresh_rm", "lower_lr", "none")


@dataclass
class Verdict:
    name: str
    fired: bool
    reason: str
    remedy: str
    skipped: bool = False  # could not judge (missing metric): excluded from majority votes
    veto: bool = False  # fired and must reject whatever the vote mode


def metric(record: dict | None, key: str) -> float | None:
    """``record[key]`` as a float (possibly NaN/inf), or None when absent/not numeric."""
    if not record or key not in record:
        return None
    value = record[key]
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _num(owner: str, name: str, value: Any, *, minimum: float | None = None,
         strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{owner}.{name} must be {'>' if strict else '>='} {minimum}, got {value}")


@dataclass
class Detector:
    """Base class: subclasses set ``name``, fields, a default remedy and ``check``."""

    name: ClassVar[str] = "detector"
    # field -> (minimum, strict): numeric config checked in __post_init__; a None
    # value is allowed for fields whose default is None (optional thresholds).
    LIMITS: ClassVar[dict[str, tuple[float, bool]]] = {}
    remedy: str = field(default="none", kw_only=True)

    def __post_init__(self) -> None:
        if self.remedy not in REMEDIES:
            raise ValueError(f"{self.name}.remedy must be one of {REMEDIES}, got {self.remedy!r}")
        for fname, (lo, strict) in self.LIMITS.items():
            value = getattr(self, fname)
            if value is None and self.__dataclass_fields__[fname].default is None:
                continue
            _num(self.name, fname, value, minimum=lo, strict=strict)

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        raise NotImplementedError

    def _fire(self, fired: bool, reason: str) -> Verdict:
        return Verdict(self.name, fired, reason, self.remedy)

    def _skip(self, reason: str) -> Verdict:
        return Verdict(self.name, False, f"skipped: {reason}", self.remedy, skipped=True)

    def _need(self, current: dict, baseline: dict, cur_keys: tuple[str, ...],
              base_keys: tuple[str, ...] = ()) -> tuple[dict, dict, Verdict | None]:
        """Fetch finite metrics or return a skipped verdict naming what is missing."""
        out: tuple[dict, dict] = ({}, {})
        for vals, src, rec, keys in ((out[0], "current", current, cur_keys),
                                     (out[1], "baseline", baseline, base_keys)):
            for key in keys:
                v = metric(rec, key)
                if v is None:
                    return {}, {}, self._skip(f"no {key!r} in {src} record")
                if not math.isfinite(v):
                    return {}, {}, self._skip(f"non-finite {key!r} in {src} record")
                vals[key] = v
        return out[0], out[1], None


@dataclass
class NonFiniteMetrics(Detector):
    """Fires when a core metric of the current record is NaN/inf (diverged training)."""

    name: ClassVar[str] = "non_finite"
    keys: tuple[str, ...] = ("gold", "proxy", "kl")
    remedy: str = field(default="lower_lr", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keys, str) or not all(isinstance(k, str) and k for k in self.keys):
            raise ValueError(f"{self.name}.keys must be a list of metric names, got {self.keys!r}")
        self.keys = tuple(self.keys)  # lists arrive from YAML/JSON

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        bad = [k for k in self.keys
               if (v := metric(current, k)) is not None and not math.isfinite(v)]
        if bad:
            return Verdict(self.name, True, f"non-finite metric(s): {', '.join(bad)}",
                           self.remedy, veto=True)
        return self._fire(False, "all present core metrics finite")


@dataclass
class ProxyUpGoldDown(Detector):
    """Proxy reward up while gold reward down: the Goodhart signature (Gao et al. 2022)."""

    name: ClassVar[str] = "proxy_up_gold_down"
    min_proxy_gain: float = 0.0
    min_gold_drop: float = 0.05
    remedy: str = field(default="refresh_rm", kw_only=True)
    LIMITS: ClassVar = {"min_proxy_gain": (0.0, False), "min_gold_drop": (0.0, False)}

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        keys = ("gold", "proxy")
        cur, base, skip = self._need(current, baseline, keys, keys)
        if skip:
            return skip
        gain, gold_change = cur["proxy"] - base["proxy"], cur["gold"] - base["gold"]
        fired = gain > self.min_proxy_gain and -gold_change > self.min_gold_drop
        return self._fire(fired, f"proxy {gain:+.4g} vs baseline, gold {gold_change:+.4g} "
                                 f"(fires if proxy > +{self.min_proxy_gain:.4g} and "
                                 f"gold < -{self.min_gold_drop:.4g})")


@dataclass
class ProxyUpOracleDown(Detector):
    """The gold-free Goodhart signature: the RM scores the candidate higher than the last good policy
    (under one RM) while the gate's oracle (a judge, a held-out RM) prefers the last good policy."""

    name: ClassVar[str] = "proxy_up_oracle_down"
    min_proxy_gain: float = 0.0
    max_win_rate: float = 0.5
    remedy: str = field(default="refresh_rm", kw_only=True)
    LIMITS: ClassVar = {"min_proxy_gain": (0.0, False), "max_win_rate": (0.0, False)}

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        if current.get("h2h_decision") is None and metric(current, "gold") is not None:
            return self._fire(False, "the gate judges by gold: proxy_up_gold_down checks this")
        if current.get("h2h_decision") is None:
            return self._skip("no oracle head-to-head (loop.gate.oracle=judge or heldout_rm)")
        if current.get("h2h_decision") == "skipped":
            return self._skip("the oracle's head-to-head was skipped: it could not tell the policies apart")
        cur, base, skip = self._need(current, baseline, ("proxy", "win_rate"), ("proxy",))
        if skip:
            return skip
        gain = cur["proxy"] - base["proxy"]
        fired = gain > self.min_proxy_gain and cur["win_rate"] < self.max_win_rate
        return self._fire(fired, f"proxy {gain:+.4g} vs the last good policy, oracle win rate {cur['win_rate']:.3g} "
                                 f"(fires if proxy > +{self.min_proxy_gain:.4g} and win rate < {self.max_win_rate:.3g})")


@dataclass
class DisagreementSpike(Detector):
    """RM-ensemble std jumps: the policy found inputs the RMs disagree on (Coste et al. 2023)."""

    name: ClassVar[str] = "disagreement_spike"
    ratio: float = 2.0
    min_abs: float = 0.05
    remedy: str = field(default="refresh_rm", kw_only=True)
    LIMITS: ClassVar = {"ratio": (1.0, False), "min_abs": (0.0, False)}

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        keys = ("disagreement",)
        cur, base, skip = self._need(current, baseline, keys, keys)
        if skip:
            return skip
        now, before = cur["disagreement"], base["disagreement"]
        # Both conditions: the ratio alone fires on noise when the baseline is ~0.
        fired = now > self.ratio * before and now > before + self.min_abs
        return self._fire(fired, f"disagreement {now:.4g} vs baseline {before:.4g} "
                                 f"(fires above x{self.ratio:.4g} and +{self.min_abs:.4g})")


@dataclass
class KLBudget(Detector):
    """KL to the reference exceeds a hard budget."""

    name: ClassVar[str] = "kl_budget"
    max_kl: float
    remedy: str = field(default="raise_beta", kw_only=True)
    LIMITS: ClassVar = {"max_kl": (0.0, True)}

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        cur, _, skip = self._need(current, baseline, ("kl",))
        if skip:
            return skip
        fired = cur["kl"] > self.max_kl
        return self._fire(fired, f"kl {cur['kl']:.4g} {'>' if fired else '<='} "
                                 f"budget {self.max_kl:.4g}")


@dataclass
class LengthDrift(Detector):
    """Completions grow much longer without a matching gold gain (length hacking). Without gold
    (a user's task) the oracle's length-controlled win rate excuses it where the gate has an oracle
    (loop.gate.oracle=judge|heldout_rm); with neither, length alone decides."""

    name: ClassVar[str] = "length_drift"
    max_rel_increase: float = 0.3
    gold_flat_tol: float = 0.05
    # Without gold, a length-controlled oracle win rate above this excuses the growth (a judged gate only).
    lc_win_rate_excuse: float = 0.5
    remedy: str = field(default="raise_beta", kw_only=True)
    LIMITS: ClassVar = {"max_rel_increase": (0.0, True), "gold_flat_tol": (0.0, False), "lc_win_rate_excuse": (0.0, False)}

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        no_gold = metric(current, "gold") is None and metric(baseline, "gold") is None
        keys = ("length",) if no_gold else ("length", "gold")
        cur, base, skip = self._need(current, baseline, keys, keys)
        if skip:
            return skip
        if base["length"] <= 0:
            return self._skip(f"baseline length {base['length']:.4g} <= 0")
        rel = cur["length"] / base["length"] - 1.0
        lc = metric(current, "win_rate_lc")
        if no_gold and lc is not None and math.isfinite(lc) and current.get("h2h_decision") not in (None, "skipped"):
            # Without gold, the oracle's length-controlled win rate is the excuse: longer, and better at equal length.
            fired = rel > self.max_rel_increase and lc <= self.lc_win_rate_excuse
            return self._fire(fired, f"length {rel:+.1%} vs baseline, oracle's length-controlled win rate {lc:.3g} "
                                     f"(fires above +{self.max_rel_increase:.0%} unless it is > {self.lc_win_rate_excuse:.3g})")
        if no_gold:
            return self._fire(rel > self.max_rel_increase,
                              f"length {rel:+.1%} vs baseline (fires above +{self.max_rel_increase:.0%}; "
                              "no gold to excuse it)")
        gold_gain = cur["gold"] - base["gold"]
        fired = rel > self.max_rel_increase and gold_gain <= self.gold_flat_tol
        return self._fire(fired, f"length {rel:+.1%} vs baseline, gold {gold_gain:+.4g} "
                                 f"(fires above +{self.max_rel_increase:.0%} unless gold "
                                 f"> +{self.gold_flat_tol:.4g})")


@dataclass
class EntropyCollapse(Detector):
    """Policy entropy falls to a fraction of the baseline (or under a floor): mode collapse."""

    name: ClassVar[str] = "entropy_collapse"
    min_ratio: float = 0.5
    min_abs: float | None = None
    remedy: str = field(default="lower_lr", kw_only=True)
    LIMITS: ClassVar = {"min_ratio": (0.0, False), "min_abs": (0.0, False)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_ratio >= 1.0:
            raise ValueError(f"{self.name}.min_ratio must be < 1, got {self.min_ratio}")

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        cur, _, skip = self._need(current, baseline, ("entropy",))
        if skip:
            return skip
        now, reasons = cur["entropy"], []
        if self.min_abs is not None and now < self.min_abs:
            reasons.append(f"entropy {now:.4g} < floor {self.min_abs:.4g}")
        before = metric(baseline, "entropy")
        if before is not None and math.isfinite(before):
            if now < self.min_ratio * before:
                reasons.append(f"entropy {now:.4g} < {self.min_ratio:.4g} x baseline {before:.4g}")
        elif self.min_abs is None:
            return self._skip("no finite 'entropy' in baseline record and no min_abs floor")
        if reasons:
            return self._fire(True, "; ".join(reasons))
        return self._fire(False, f"entropy {now:.4g} vs baseline {before}")


@dataclass
class CapabilityAnchors(Detector):
    """The policy forgets what it could do: the capability anchors' per-token NLL rises by more than
    `max_nll_increase` nats, or their greedy exact-match rate falls by more than `max_match_drop`, against
    the initial (SFT) policy's record (against="initial", so slow creep adds up) or the last accepted one."""

    name: ClassVar[str] = "capability_anchors"
    max_nll_increase: float = 0.25
    max_match_drop: float = 0.1
    against: str = "initial"
    remedy: str = field(default="raise_beta", kw_only=True)
    LIMITS: ClassVar = {"max_nll_increase": (0.0, False), "max_match_drop": (0.0, False)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.against not in ("initial", "last_good"):
            raise ValueError(f"{self.name}.against must be 'initial' or 'last_good', got {self.against!r}")

    def check(self, current: dict, baseline: dict, history: list[dict]) -> Verdict:
        ref = history[0] if self.against == "initial" and history else baseline
        cur, base, skip = self._need(current, ref, ("anchor_nll",), ("anchor_nll",))
        if skip:
            return self._skip(skip.reason.removeprefix("skipped: ") + " (no capability anchors: task.anchors)")
        rise = cur["anchor_nll"] - base["anchor_nll"]
        reasons = [f"anchor NLL {rise:+.3f} nats/token vs the {self.against} policy (fires above "
                   f"+{self.max_nll_increase:.3g})"]
        fired = rise > self.max_nll_increase
        now, before = metric(current, "anchor_match"), metric(ref, "anchor_match")
        if now is not None and before is not None and math.isfinite(now) and math.isfinite(before):
            drop = before - now
            fired |= drop > self.max_match_drop
            reasons.append(f"exact match {before:.2f} -> {now:.2f} (fires on a drop above {self.max_match_drop:.2f})")
        return self._fire(fired, "; ".join(reasons))


DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (NonFiniteMetrics, ProxyUpGoldDown, ProxyUpOracleDown, DisagreementSpike,
                              KLBudget, LengthDrift, EntropyCollapse, CapabilityAnchors)
}


def default_detectors(max_kl: float | None = None) -> list[Detector]:
    """The default set; ``KLBudget`` only when a budget is given (it has no sane default)."""
    dets: list[Detector] = [NonFiniteMetrics(), ProxyUpGoldDown(), DisagreementSpike(),
                            LengthDrift(), EntropyCollapse()]
    if max_kl is not None:
        dets.append(KLBudget(max_kl))
    return dets


def _build_one(entry: Any) -> tuple[str, Detector | None]:
    if not isinstance(entry, dict):
        raise ValueError(f"detector config must be a dict, got {entry!r}")
    entry = dict(entry)
    name = entry.pop("name", None)
    if name not in DETECTORS:
        raise ValueError(f"unknown detector name {name!r}; known: {', '.join(DETECTORS)}")
    enabled = entry.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"{name}.enabled must be true/false, got {enabled!r}")
    cls = DETECTORS[name]
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise ValueError(f"unknown field(s) for detector {name}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}, enabled")
    missing = [n for n, f in known.items() if f.default is MISSING
               and f.default_factory is MISSING and n not in entry]
    if missing:
        raise ValueError(f"detector {name} is missing required field(s): {', '.join(missing)}")
    return name, (cls(**entry) if enabled else None)


def build_detectors(cfg: list[dict] | dict) -> list[Detector]:
    """Detectors from config.

    Accepts a list of ``{"name": ..., <fields>, "enabled": bool}`` dicts, one
    such dict, or a mapping ``{name: {<fields>} | bool}``. Unknown names or
    fields raise ValueError naming them. ``non_finite`` is added automatically
    unless the config mentions it (disable it explicitly with enabled: false):
    a diverged policy must never be promoted by omission.
    """
    if isinstance(cfg, dict):
        if "name" in cfg:
            entries = [cfg]
        else:
            entries = []
            for name, body in cfg.items():
                if isinstance(body, bool) or body is None:
                    body = {"enabled": body is not False}
                if not isinstance(body, dict):
                    raise ValueError(f"detector {name!r}: config must be a dict, got {body!r}")
                entries.append({**body, "name": name})
    elif isinstance(cfg, (list, tuple)):
        entries = list(cfg)
    else:
        raise ValueError(f"detector config must be a list or dict, got {type(cfg).__name__}")
    seen: set[str] = set()
    out: list[Detector] = []
    for entry in entries:
        name, det = _build_one(entry)
        if name in seen:
            raise ValueError(f"detector {name} configured twice")
        seen.add(name)
        if det is not None:
            out.append(det)
    if NonFiniteMetrics.name not in seen:
        out.insert(0, NonFiniteMetrics())
    return out


def run_detectors(detectors: list[Detector], current: dict, baseline: dict | None,
                  history: list[dict] | None = None) -> list[Verdict]:
    """Run every detector against the current record and the last accepted one."""
    return [d.check(current, baseline or {}, history or []) for d in detectors]
