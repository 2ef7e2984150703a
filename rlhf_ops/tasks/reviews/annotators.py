"""Simulated human annotators that label preference pairs from the gold reward.

Each annotator follows a Bradley-Terry model on the gold reward, with a temperature (how much a
small gold difference is noticed), a length bias (real raters often prefer longer answers) and a
flip rate (careless clicks)::

    P(a preferred over b) = sigmoid((gold(a) - gold(b)) / max(tau, 1e-6)
                                    + length_bias * (count_words(a) - count_words(b)))

A choice is sampled from that probability and then flipped with probability flip_rate. Every
annotator owns a `random.Random(seed)`, so labels are reproducible given seed and call order.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence

from rlhf_ops.tasks.reviews.gold import count_words, gold_reward

Row = tuple[str, str, str]  # (prompt, a, b)


def _sigmoid(x: float) -> float:
    # Stable for the huge logits that tau -> 0 produces: never exponentiates a positive number.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class SimulatedAnnotator:
    """A noisy, possibly length-biased rater whose preferences derive from the gold reward."""

    def __init__(self, tau: float = 0.1, length_bias: float = 0.0, flip_rate: float = 0.0,
                 seed: int = 0, name: str = "annotator"):
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {flip_rate}")
        self.tau, self.length_bias, self.flip_rate = tau, length_bias, flip_rate
        self.seed, self.name = seed, name
        self.rng = random.Random(seed)

    def __repr__(self) -> str:
        return (f"SimulatedAnnotator(tau={self.tau}, length_bias={self.length_bias}, "
                f"flip_rate={self.flip_rate}, seed={self.seed}, name={self.name!r})")

    def prob_a(self, prompt: str, a: str, b: str) -> float:
        """Probability of preferring `a`, before flips."""
        logit = (gold_reward(prompt, a) - gold_reward(prompt, b)) / max(self.tau, 1e-6)
        logit += self.length_bias * (count_words(a) - count_words(b))
        return _sigmoid(logit)

    def prefers_a(self, prompt: str, a: str, b: str) -> bool:
        p = self.prob_a(prompt, a, b)
        # Always draw both numbers so the random stream advances identically on every call.
        choice, flip = self.rng.random() < p, self.rng.random() < self.flip_rate
        return choice != flip

    def label(self, prompt: str, a: str, b: str) -> tuple[str, str]:
        """(chosen, rejected)."""
        return (a, b) if self.prefers_a(prompt, a, b) else (b, a)


def default_panel(seed: int = 0) -> list[SimulatedAnnotator]:
    """Four annotators of different quality, with distinct names and seeds."""
    return [
        SimulatedAnnotator(tau=0.05, flip_rate=0.02, seed=seed * 1000 + 1, name="careful"),
        SimulatedAnnotator(tau=0.2, flip_rate=0.05, seed=seed * 1000 + 2, name="typical"),
        SimulatedAnnotator(tau=0.5, flip_rate=0.15, seed=seed * 1000 + 3, name="noisy"),
        SimulatedAnnotator(tau=0.2, length_bias=0.05, flip_rate=0.05, seed=seed * 1000 + 4,
                           name="length_biased"),
    ]


def agreement_with_gold(annotator: SimulatedAnnotator, rows: Iterable[Row]) -> float:
    """Fraction of rows where the annotator picks the higher-gold text; gold ties are skipped."""
    hits = total = 0
    for prompt, a, b in rows:
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        if ga == gb:
            continue
        hits += annotator.prefers_a(prompt, a, b) == (ga > gb)
        total += 1
    if total == 0:
        raise ValueError("no rows with distinct gold rewards to compare")
    return hits / total


def fleiss_kappa_binary(votes_a: Sequence[int], n_raters: int) -> float:
    """Fleiss' kappa for 2 categories; votes_a[i] = raters (of n_raters) who chose `a` on item i."""
    n_items = len(votes_a)
    if n_items == 0 or n_raters < 2:
        raise ValueError("Fleiss' kappa needs >= 1 item and >= 2 raters")
    p_items = [(k * k + (n_raters - k) ** 2 - n_raters) / (n_raters * (n_raters - 1))
               for k in votes_a]
    p_bar = sum(p_items) / n_items
    p_a = sum(votes_a) / (n_items * n_raters)
    p_e = p_a ** 2 + (1 - p_a) ** 2
    if p_e == 1.0:  # every rater always picked the same side: perfect but chance-level
        return 1.0 if p_bar == 1.0 else float("nan")
    return (p_bar - p_e) / (1 - p_e)


def inter_annotator_agreement(panel: Sequence[SimulatedAnnotator],
                              rows: Iterable[Row]) -> dict:
    """Pairwise agreement ("nameA|nameB" -> fraction), its mean and Fleiss' kappa."""
    if len(panel) < 2:
        raise ValueError("inter-annotator agreement needs at least 2 annotators")
    names = [a.name for a in panel]
    if len(set(names)) != len(names):
        raise ValueError(f"annotator names must be distinct, got {names}")
    labels = [[ann.prefers_a(*row) for ann in panel] for row in rows]
    if not labels:
        raise ValueError("no rows to label")
    pairwise = {
        f"{names[i]}|{names[j]}": sum(lab[i] == lab[j] for lab in labels) / len(labels)
        for i, j in itertools.combinations(range(len(panel)), 2)
    }
    return {
        "pairwise": pairwise,
        "mean_pairwise": sum(pairwise.values()) / len(pairwise),
        "fleiss_kappa": fleiss_kappa_binary([sum(lab) for lab in labels], len(panel)),
        "n_items": len(labels),
    }
