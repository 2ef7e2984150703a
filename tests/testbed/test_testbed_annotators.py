"""Simulated annotators: accuracy against gold, noise, length bias, determinism, agreement."""

import math
import random

import pytest

from rlhf_ops.tasks.reviews.annotators import (
    SimulatedAnnotator, agreement_with_gold, default_panel, fleiss_kappa_binary,
    inter_annotator_agreement,
)
from rlhf_ops.tasks.reviews.gold import count_words, gold_reward
from rlhf_ops.tasks.reviews.task import ReviewGrammar, degenerate_texts, make_prompt, prompt_splits


def grammar_rows(n, seed=0):
    """(prompt, a, b) from two grammar samples each, in random order, gold ties dropped."""
    grammar, rng = ReviewGrammar(seed), random.Random(seed)
    prompts = prompt_splits(seed, 400, 0, 0)["train"]
    rows = []
    while len(rows) < n:
        r = prompts[len(rows) % len(prompts)]
        a, b = (grammar.sample(r["item"], r["aspect"], rng) for _ in range(2))
        if gold_reward(r["prompt"], a) != gold_reward(r["prompt"], b):
            rows.append((r["prompt"], a, b))
    return rows


ROWS = grammar_rows(1000)


def test_near_zero_tau_agrees_with_gold():
    ann = SimulatedAnnotator(tau=1e-9, seed=1)
    assert agreement_with_gold(ann, ROWS[:500]) >= 0.98


def test_flip_rate_sets_agreement():
    ann = SimulatedAnnotator(tau=0.0, flip_rate=0.25, seed=2)
    assert agreement_with_gold(ann, ROWS) == pytest.approx(0.75, abs=0.06)


def test_prob_a_matches_formula_and_survives_tau_zero():
    p = make_prompt("the cafe", "staff")
    d = degenerate_texts("the cafe", "staff")
    ann = SimulatedAnnotator(tau=0.3, length_bias=0.02)
    logit = (gold_reward(p, d["good"]) - gold_reward(p, d["neutral"])) / 0.3 + 0.02 * (
        count_words(d["good"]) - count_words(d["neutral"]))
    assert ann.prob_a(p, d["good"], d["neutral"]) == pytest.approx(1 / (1 + math.exp(-logit)))
    exact = SimulatedAnnotator(tau=0.0)
    assert exact.prob_a(p, d["good"], d["spam"]) == 1.0
    assert exact.prob_a(p, d["spam"], d["good"]) == 0.0
    assert exact.prob_a(p, d["good"], d["good"]) == 0.5


def test_length_bias_prefers_the_longer_text_when_gold_is_close():
    close = [(p, a, b) for p, a, b in ROWS
             if abs(gold_reward(p, a) - gold_reward(p, b)) < 0.1
             and abs(count_words(a) - count_words(b)) >= 8]
    assert len(close) >= 20
    # Put the longer text first; an unbiased rater is then near a coin flip, a biased one not.
    close = [(p, a, b) if count_words(a) > count_words(b) else (p, b, a) for p, a, b in close]
    biased = SimulatedAnnotator(tau=1.0, length_bias=0.3, seed=3)
    fair = SimulatedAnnotator(tau=1.0, length_bias=0.0, seed=3)
    for row in close:
        assert biased.prob_a(*row) > 0.85
        assert abs(fair.prob_a(*row) - 0.5) < 0.05
    longer_rate = sum(biased.prefers_a(*row) for row in close) / len(close)
    assert longer_rate > 0.8


def test_labels_are_deterministic_by_seed():
    def labels(seed):
        ann = SimulatedAnnotator(tau=0.5, flip_rate=0.1, seed=seed)
        return [ann.label(*row) for row in ROWS[:300]]
    assert labels(5) == labels(5)
    assert labels(5) != labels(6)


def test_label_returns_chosen_then_rejected():
    ann = SimulatedAnnotator(tau=0.0)
    for prompt, a, b in ROWS[:100]:
        chosen, rejected = ann.label(prompt, a, b)
        assert {chosen, rejected} == {a, b}
        assert gold_reward(prompt, chosen) > gold_reward(prompt, rejected)


def test_default_panel_has_distinct_annotators_of_different_quality():
    panel = default_panel(0)
    assert len(panel) >= 3 and len({a.name for a in panel}) == len(panel)
    assert any(a.length_bias > 0 for a in panel)
    acc = {a.name: agreement_with_gold(a, ROWS) for a in panel}
    assert acc["careful"] > acc["noisy"] + 0.1
    assert all(0.6 < v < 1.0 for v in acc.values())
    assert [a.seed for a in default_panel(1)] != [a.seed for a in panel]


def test_inter_annotator_agreement_of_clones_and_independent_coins():
    clones = [SimulatedAnnotator(tau=0.0, seed=9, name=f"c{i}") for i in range(3)]
    out = inter_annotator_agreement(clones, ROWS[:200])
    assert set(out["pairwise"]) == {"c0|c1", "c0|c2", "c1|c2"}
    assert out["mean_pairwise"] == 1.0 and out["fleiss_kappa"] == pytest.approx(1.0)
    assert out["n_items"] == 200
    coins = [SimulatedAnnotator(tau=1e9, seed=i, name=f"r{i}") for i in range(4)]
    out = inter_annotator_agreement(coins, ROWS)
    assert out["mean_pairwise"] == pytest.approx(0.5, abs=0.06)
    assert abs(out["fleiss_kappa"]) < 0.08


def test_fleiss_kappa_hand_cases_and_errors():
    assert fleiss_kappa_binary([2, 0, 2, 0], 2) == pytest.approx(1.0)
    assert fleiss_kappa_binary([1, 1, 1, 1], 2) == pytest.approx(-1.0)
    # 3 raters, 4 items: P_i = [1, 1/3, 1/3, 1], p_a = 6/12 -> kappa = (2/3 - 1/2) / (1/2)
    assert fleiss_kappa_binary([3, 2, 1, 0], 3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        fleiss_kappa_binary([], 3)
    with pytest.raises(ValueError):
        inter_annotator_agreement([SimulatedAnnotator(name="x")] * 2, ROWS[:5])
    with pytest.raises(ValueError):
        SimulatedAnnotator(flip_rate=1.5)
