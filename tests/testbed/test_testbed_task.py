"""Prompts, splits, the review grammar and the tokenizer corpus of the testbed."""

import random
import statistics

import pytest

from rlhf_ops.tasks.reviews.gold import GOLD_WINDOW, count_words, gold_terms, words_of
from rlhf_ops.tasks.reviews.task import (
    ASPECTS, HINTS, ITEMS, NAMES, TEMPLATES, ReviewGrammar, all_prompt_rows, degenerate_texts,
    make_prompt, parse_prompt, prompt_splits, tokenizer_corpus,
)


def test_parse_prompt_round_trips_every_prompt():
    rows = all_prompt_rows()
    assert len(rows) == len(ITEMS) * len(ASPECTS) * len(TEMPLATES) * len(NAMES) * len(HINTS)
    assert len(rows) >= 3000
    assert len({r[1] for r in rows}) == len(rows), "prompts must be distinct"
    assert len({r[0] for r in rows}) == len(rows), "prompt ids must be distinct"
    for _pid, prompt, item, aspect in rows:
        assert parse_prompt(prompt) == (item, aspect)
        assert prompt.endswith("\nReview:") and prompt.isascii()


def test_make_prompt_variants_render_names_and_templates():
    plain = make_prompt("the hotel", "service")
    assert plain == "Write a short review of the hotel, focusing on the service.\nReview:"
    named = make_prompt("the pizza place", "food", template=2, name="Luigi", hint=1)
    assert named == "Give your opinion of Luigi's pizza place's food. Keep it short.\nReview:"
    assert parse_prompt(named) == ("the pizza place", "food")


@pytest.mark.parametrize("bad", ["", "Write a short review of the moon, focusing on the service."
                                 "\nReview:", "Review the hotel.", "hello\nReview:"])
def test_parse_prompt_rejects_foreign_prompts(bad):
    with pytest.raises(ValueError, match="not a testbed prompt"):
        parse_prompt(bad)


def test_make_prompt_rejects_unknown_item_and_aspect():
    with pytest.raises(ValueError, match="unknown item"):
        make_prompt("the moon", "service")
    with pytest.raises(ValueError, match="unknown aspect"):
        make_prompt("the hotel", "taste")


def test_splits_are_disjoint_sized_and_deterministic():
    s = prompt_splits(7, 300, 50, 40)
    assert {k: len(v) for k, v in s.items()} == {"train": 300, "eval": 50, "gold_eval": 40}
    ids = [set(r["prompt_id"] for r in s[k]) for k in ("train", "eval", "gold_eval")]
    prompts = [set(r["prompt"] for r in s[k]) for k in ("train", "eval", "gold_eval")]
    for sets in (ids, prompts):
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for split, rows in s.items():
        for r in rows:
            assert set(r) == {"prompt", "item", "aspect", "prompt_id", "split"}
            assert r["split"] == split and parse_prompt(r["prompt"]) == (r["item"], r["aspect"])
    assert prompt_splits(7, 300, 50, 40) == s
    assert prompt_splits(8, 300, 50, 40)["train"] != s["train"]


def test_prompt_ids_are_stable_across_seeds():
    a = {r["prompt"]: r["prompt_id"] for rows in prompt_splits(1, 2000, 0, 0).values()
         for r in rows}
    b = {r["prompt"]: r["prompt_id"] for rows in prompt_splits(2, 2000, 0, 0).values()
         for r in rows}
    shared = set(a) & set(b)
    assert shared and all(a[p] == b[p] for p in shared)


def test_asking_for_too_many_prompts_raises():
    n = len(all_prompt_rows())
    assert sum(len(v) for v in prompt_splits(0, n - 2, 1, 1).values()) == n
    with pytest.raises(ValueError, match="distinct prompts exist"):
        prompt_splits(0, n, 1, 0)
    with pytest.raises(ValueError):
        prompt_splits(0, -1, 1, 0)


def _samples(seed, n):
    g, rng = ReviewGrammar(seed), random.Random(seed + 1)
    out = []
    for _ in range(n):
        item, aspect = rng.choice(ITEMS), rng.choice(ASPECTS)
        text, flaw = g.sample_with_flaw(item, aspect)
        out.append((item, aspect, text, flaw))
    return out


def test_grammar_is_deterministic_by_seed():
    assert _samples(3, 50) == _samples(3, 50)
    assert [s[2] for s in _samples(3, 50)] != [s[2] for s in _samples(4, 50)]
    rng_a, rng_b = random.Random(5), random.Random(5)
    g = ReviewGrammar(0)
    assert g.sample_many("the car", "design", 5, rng_a) == g.sample_many("the car", "design", 5,
                                                                          rng_b)


def test_grammar_output_is_learnable_and_of_mixed_quality():
    samples = _samples(0, 2000)
    texts = [s[2] for s in samples]
    assert all(t.startswith(" ") and t.isascii() and "\n" not in t for t in texts)
    flaw_rate = sum(bool(s[3]) for s in samples) / len(samples)
    assert 0.2 <= flaw_rate <= 0.4
    assert {s[3] for s in samples} == {"", "repetition", "off_topic", "no_ending", "overlong",
                                       "too_short"}
    vocab = {w for t in texts for w in words_of(t)}
    assert 100 <= len(vocab) <= 400
    clean = [s for s in samples if not s[3]]
    lengths = [count_words(s[2]) for s in clean]
    assert GOLD_WINDOW[0] <= statistics.median(lengths) <= GOLD_WINDOW[1]
    # Clean samples carry no penalty of any kind (beyond a word or two of overlength).
    for item, aspect, text, _ in clean:
        t = gold_terms(make_prompt(item, aspect), text)
        assert t["repetition_penalty"] == t["off_topic_penalty"] == t["ending_penalty"] == 0
        assert t["length_penalty"] <= 0.1
    # Sentiment really varies: both clearly negative and clearly positive clean samples.
    sentiments = [gold_terms(make_prompt(i, a), t)["sentiment"] for i, a, t, _ in clean]
    assert min(sentiments) < -0.5 and max(sentiments) > 0.8


def test_degenerate_texts_have_all_named_kinds():
    d = degenerate_texts("the laptop", "battery")
    assert {"spam", "off_topic", "overlong", "no_ending", "repetitive_positive", "good"} <= set(d)
    assert all(t.startswith(" ") and t.isascii() for t in d.values())
    assert count_words(d["overlong"]) > 2 * GOLD_WINDOW[1]
    assert not d["no_ending"].rstrip().endswith((".", "!", "?"))


def test_tokenizer_corpus_covers_the_task():
    corpus = tokenizer_corpus(0, n=600)
    assert len(corpus) == 600 and corpus == tokenizer_corpus(0, n=600)
    joined = "\n".join(corpus)
    for template in TEMPLATES:
        assert template.split("{")[0] in joined
    for name in NAMES[1:]:
        assert f"{name}'s" in joined
    for word in [w for i in ITEMS for w in i.split()] + ASPECTS:
        assert word in joined
    assert "great great great" in joined  # degenerate texts are included
    assert all(t.isascii() for t in corpus)
