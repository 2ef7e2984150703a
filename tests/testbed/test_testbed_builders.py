"""Dataset builders: columns, provenance, labels consistent with gold, atomic table I/O."""

import os

import pandas as pd
import pytest

from rlhf_ops.tasks.reviews.annotators import SimulatedAnnotator
from rlhf_ops.tasks.reviews.builders import (
    PAIR_COLUMNS, build_grammar_pairs, build_prompt_pool, build_sft_demos, pairs_from_candidates,
    read_table, write_table,
)
from rlhf_ops.tasks.reviews.gold import gold_reward
from rlhf_ops.tasks.reviews.task import degenerate_texts, prompt_splits

SPLITS = prompt_splits(0, 60, 10, 10)
TRAIN = SPLITS["train"]


def test_sft_demos_columns_gold_and_determinism():
    df = build_sft_demos(TRAIN, 3, seed=4)
    assert list(df.columns) == ["prompt", "completion", "gold", "prompt_id", "source", "seed"]
    assert len(df) == 3 * len(TRAIN)
    assert (df["source"] == "grammar").all() and (df["seed"] == 4).all()
    assert all(gold_reward(p, c) == g for p, c, g in zip(df.prompt, df.completion, df.gold))
    assert df["prompt_id"].value_counts().eq(3).all()
    pd.testing.assert_frame_equal(df, build_sft_demos(TRAIN, 3, seed=4))
    assert not df.equals(build_sft_demos(TRAIN, 3, seed=5))


def test_sft_demos_min_gold_filters():
    full = build_sft_demos(TRAIN, 4, seed=1)
    kept = build_sft_demos(TRAIN, 4, seed=1, min_gold=0.0)
    assert 0 < len(kept) < len(full)
    assert (kept["gold"] >= 0.0).all()
    assert len(kept) == (full["gold"] >= 0.0).sum()


def test_pairs_from_candidates_labels_and_provenance():
    rows = TRAIN[:4]
    cands = [list(degenerate_texts(r["item"], r["aspect"]).values()) for r in rows]
    ann = SimulatedAnnotator(tau=0.0, name="oracle")
    df = pairs_from_candidates(rows, cands, ann, iteration=3, policy_checkpoint="ckpt/step-30",
                               source="policy", rng_seed=0)
    assert list(df.columns) == PAIR_COLUMNS and len(df) == 4
    assert df["pair_id"].is_unique and df["pair_id"].str.startswith("policy-it3-").all()
    assert (df.labeler == "oracle").all() and (df.iteration == 3).all()
    assert (df.policy_checkpoint == "ckpt/step-30").all() and (df.source == "policy").all()
    for r, c, (_, row) in zip(rows, cands, df.iterrows()):
        assert row.prompt == r["prompt"] and row.prompt_id == r["prompt_id"]
        assert row.chosen in c and row.rejected in c and row.chosen != row.rejected
        assert row.gold_chosen == gold_reward(row.prompt, row.chosen)
        assert row.gold_rejected == gold_reward(row.prompt, row.rejected)
        assert row.gold_chosen > row.gold_rejected  # tau = 0 oracle
    again = pairs_from_candidates(rows, cands, SimulatedAnnotator(tau=0.0, name="oracle"),
                                  iteration=3, policy_checkpoint="ckpt/step-30",
                                  source="policy", rng_seed=0)
    pd.testing.assert_frame_equal(df, again)


def test_pairs_from_candidates_skips_collapsed_prompts_and_checks_lengths():
    rows = TRAIN[:3]
    cands = [[" Same text here.", " Same text here."], [" One.", " Two."], [" Only one."]]
    df = pairs_from_candidates(rows, cands, SimulatedAnnotator(), iteration=0,
                               policy_checkpoint="c", source="policy", rng_seed=0)
    assert df["prompt_id"].tolist() == [rows[1]["prompt_id"]]
    with pytest.raises(ValueError, match="candidate lists"):
        pairs_from_candidates(rows, cands[:2], SimulatedAnnotator(), iteration=0,
                              policy_checkpoint="c", source="policy", rng_seed=0)


def test_grammar_pairs_count_cycle_and_provenance():
    ann = SimulatedAnnotator(tau=0.1, name="careful")
    df = build_grammar_pairs(TRAIN[:7], 30, ann, seed=2)
    assert list(df.columns) == PAIR_COLUMNS and len(df) == 30
    assert df["pair_id"].is_unique
    assert (df.iteration == -1).all() and (df.policy_checkpoint == "grammar").all()
    assert (df.source == "grammar").all() and (df.labeler == "careful").all()
    assert (df.chosen != df.rejected).all()
    assert sorted(df.prompt_id.value_counts().tolist()) == [4, 4, 4, 4, 4, 5, 5]


def test_prompt_pool_columns():
    pool = build_prompt_pool(SPLITS["train"] + SPLITS["eval"])
    assert list(pool.columns) == ["prompt", "prompt_id", "item", "aspect", "split"]
    assert len(pool) == 70 and set(pool.split) == {"train", "eval"}


@pytest.mark.parametrize("name", ["pairs.parquet", "pairs.jsonl", "sub/dir/pairs.jsonl"])
def test_write_read_round_trip_is_exact_and_leaves_no_tmp(tmp_path, name):
    df = build_grammar_pairs(TRAIN, 40, SimulatedAnnotator(), seed=0)
    path = tmp_path / name
    write_table(df, path)
    back = read_table(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_exact=True)
    assert back["iteration"].tolist() == [-1] * 40
    # Overwrite in place with a different table.
    write_table(df.iloc[:5], str(path))
    assert len(read_table(str(path))) == 5
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_failed_write_keeps_the_old_file_and_no_tmp(tmp_path):
    path = tmp_path / "demos.jsonl"
    good = build_sft_demos(TRAIN[:2], 1, seed=0)
    write_table(good, path)
    bad = good.assign(extra=[{1, 2}] * len(good))  # a set is not JSON-serialisable
    with pytest.raises(TypeError):
        write_table(bad, path)
    pd.testing.assert_frame_equal(read_table(path), good, check_dtype=False)
    assert os.listdir(tmp_path) == ["demos.jsonl"]
