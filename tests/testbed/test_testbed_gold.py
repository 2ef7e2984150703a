"""Each term of the gold reward, checked on hand-written completions."""

import random

import pytest

from rlhf_ops.tasks.reviews.gold import GOLD_WINDOW, count_words, gold_reward, gold_terms
from rlhf_ops.tasks.reviews.task import ASPECTS, ITEMS, ReviewGrammar, degenerate_texts, make_prompt

P = make_prompt("the hotel", "service", template=1, name="Rosa", hint=2)
BASE = " The service at the hotel was great and the rooms were clean."


def g(text, prompt=P):
    return gold_reward(prompt, text)


def test_count_words_counts_alphabetic_tokens():
    assert count_words(" Rosa's hotel, 5 stars!!!") == 4  # rosa, s, hotel, stars
    assert count_words("") == 0 and count_words(" !!! 42 ") == 0


def test_repeated_clauses_lower_gold():
    repeated = BASE + BASE + BASE
    assert gold_terms(P, repeated)["repetition_penalty"] > 0.5
    assert g(repeated) < g(BASE) - 0.5


def test_stuttered_words_lower_gold_despite_higher_sentiment():
    stutter = " The service at the hotel was great great great and the rooms were clean."
    assert gold_terms(P, stutter)["sentiment"] > gold_terms(P, BASE)["sentiment"]
    assert g(stutter) < g(BASE) - 0.3


def test_off_topic_lowers_gold_and_partial_mention_is_in_between():
    only_aspect = " The service at the museum was great and the rooms were clean."
    only_item = " The food at the hotel was great and the rooms were clean."
    neither = " The weather at the park was great and the rooms were clean."
    assert gold_terms(P, BASE)["off_topic_penalty"] == 0
    assert g(BASE) > g(only_aspect) > g(neither)
    assert g(BASE) > g(only_item) > g(neither)
    # Items of two words must be matched as a phrase.
    pp = make_prompt("the pizza place", "food")
    assert gold_terms(pp, " The food at the pizza place was good and fresh today.")[
        "off_topic_penalty"] == 0
    assert gold_terms(pp, " The food at the place was good and the pizza was fresh.")[
        "off_topic_penalty"] > 0


def test_too_short_and_too_long_lower_gold_growing_with_distance():
    short = " Great service at the hotel."
    assert count_words(short) < GOLD_WINDOW[0]
    assert gold_terms(P, short)["length_penalty"] > 0 and g(short) < g(BASE)
    filler = [" We went there last week.", " My sister came with me.", " It was busy today.",
              " We walked from the station.", " The lobby had a big map.", " We ate some bread.",
              " The room was on floor two.", " Our train left at noon.", " I read a book.",
              " The bed was soft.", " We met a tall man.", " The sky was blue all day.",
              " We took a taxi home."]
    long1 = BASE + "".join(filler[:8])
    long2 = BASE + "".join(filler)
    assert GOLD_WINDOW[1] < count_words(long1) < count_words(long2)
    p1, p2 = gold_terms(P, long1)["length_penalty"], gold_terms(P, long2)["length_penalty"]
    assert 0 < p1 < p2
    assert g(long2) < g(long1) < g(BASE)


def test_missing_ending_lowers_gold():
    cut = BASE.rstrip(".")
    assert gold_terms(P, cut)["ending_penalty"] > 0
    assert g(cut) == pytest.approx(g(BASE) - gold_terms(P, cut)["ending_penalty"])
    assert gold_terms(P, BASE[:-1] + "!")["ending_penalty"] == 0
    assert gold_terms(P, BASE + "  ")["ending_penalty"] == 0


def test_more_positive_well_formed_text_scores_higher():
    texts = [" The service at the hotel was awful and the rooms were dirty.",
             " The service at the hotel was okay and the rooms were normal.",
             " The service at the hotel was good and the rooms were clean.",
             " The service at the hotel was excellent and the rooms were wonderful."]
    golds = [g(t) for t in texts]
    assert golds == sorted(golds) and golds[-1] - golds[0] > 1.0


@pytest.mark.parametrize("item", ITEMS)
def test_hump_spam_and_degenerates_score_far_below_good(item):
    for aspect in ASPECTS:
        p = make_prompt(item, aspect)
        d = {k: gold_reward(p, v) for k, v in degenerate_texts(item, aspect).items()}
        terms = gold_terms(p, degenerate_texts(item, aspect)["spam"])
        # Spam wins on sentiment alone but loses on gold: the hump.
        assert terms["sentiment"] > gold_terms(p, degenerate_texts(item, aspect)["good"])[
            "sentiment"]
        assert d["spam"] < d["good"] - 2.0
        for kind in ("spam", "overlong", "repetitive_positive"):
            assert d[kind] < d["neutral"], kind
        for kind in ("off_topic", "no_ending", "repetitive_positive", "overlong"):
            assert d[kind] < d["good"] - 0.5, kind


@pytest.mark.parametrize("empty", ["", " ", "\n", " !!!", " ... ?"])
def test_empty_completion_is_very_negative(empty):
    assert g(empty) == -2.0 and gold_terms(P, empty)["empty"] == 1.0
    assert g(empty) < g(" Bad.")


def test_gold_is_pure_bounded_and_rejects_foreign_prompts():
    grammar, rng = ReviewGrammar(0), random.Random(0)
    for _ in range(300):
        item, aspect = rng.choice(ITEMS), rng.choice(ASPECTS)
        text = grammar.sample(item, aspect, rng)
        p = make_prompt(item, aspect)
        assert -2.0 <= gold_reward(p, text) <= 1.5
        assert gold_reward(p, text) == gold_reward(p, text) == gold_terms(p, text)["gold"]
    with pytest.raises(ValueError):
        gold_reward("Tell me a joke.\nReview:", BASE)
