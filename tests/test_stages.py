"""Each TRL stage trains a few steps on tiny models: trainable parameters change, the loss is
finite, and the outputs reload (TRL's own trainer tests assert the same)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import stage_cfg
from rlhf_ops.artifacts import META_FILE, read_meta
from rlhf_ops.launcher import run_stage
from rlhf_ops.models import load_policy, load_sequence_classifier, reward_members


def changed(before: torch.nn.Module, after: torch.nn.Module, skip=("score",)) -> float:
    """Fraction of shared parameter tensors whose values changed."""
    a = dict(before.named_parameters())
    n = moved = 0
    for name, p in after.named_parameters():
        if name in a and not any(s in name for s in skip):
            n += 1
            moved += int(not torch.allclose(a[name], p))
    return moved / max(n, 1)


@pytest.fixture(scope="module")
def sft_out(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "policy"
    meta = run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": tiny_assets["policy"], "data": tiny_assets["sft"]},
                     output=out, seed=0, progress=False)
    return out, meta


@pytest.mark.trl_latest
def test_sft_trains_and_reloads(sft_out, tiny_assets):
    out, meta = sft_out
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert meta["metrics"]["global_step"] == 6
    assert changed(load_policy(tiny_assets["policy"]), load_policy(out)) > 0.9
    assert (out / META_FILE).is_file() and read_meta(out)["stage"] == "sft"
    assert not list(out.glob("*.bin")), "only safetensors and JSON in a checkpoint"
    assert not out.with_name(out.name + ".tmp").exists()


@pytest.mark.trl_latest
def test_reward_ensemble_members_differ(sft_out, tiny_assets, tmp_path):
    out = tmp_path / "rm"
    meta = run_stage("reward", cfg=stage_cfg("reward", ensemble_size=2), inputs={"reward_model": str(sft_out[0]),
                     "data": tiny_assets["pairs"]}, output=out, seed=0, progress=False)
    members = reward_members(out)
    assert [m.name for m in members] == ["member_0", "member_1"]
    assert json.loads((out / "ensemble.json").read_text())["seeds"] == [0, 1000]
    m0, m1 = (load_sequence_classifier(m) for m in members)
    # Different seeds and bootstrap resamples give different members.
    assert not torch.allclose(m0.score.weight, m1.score.weight)
    assert changed(load_sequence_classifier(sft_out[0]), m0, skip=("score",)) > 0.5
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert 0.0 <= meta["metrics"]["heldout_accuracy"] <= 1.0


@pytest.fixture(scope="module")
def rm_out(sft_out, tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    run_stage("reward", cfg=stage_cfg("reward"), inputs={"reward_model": str(sft_out[0]), "data": tiny_assets["pairs"]},
              output=out, seed=0, progress=False)
    return out


def test_ppo_trains_against_reward_model(sft_out, rm_out, tiny_assets, tmp_path):
    out = tmp_path / "ppo"
    meta = run_stage("ppo", cfg=stage_cfg("ppo"), inputs={"policy": str(sft_out[0]), "reward_model": str(rm_out),
                     "data": tiny_assets["prompts"]}, output=out, seed=0, progress=False, extra={"beta": 0.2})
    m = meta["metrics"]
    assert m["kl_coef"] == 0.2, "the loop's beta reaches PPO's kl_coef"
    assert math.isfinite(m["loss/policy_avg"]) and math.isfinite(m["objective/kl"])
    assert changed(load_policy(sft_out[0]), load_policy(out)) > 0.5


@pytest.mark.trl_latest
def test_dpo_trains_with_explicit_reference(sft_out, tiny_assets, tmp_path):
    out = tmp_path / "dpo"
    meta = run_stage("dpo", cfg=stage_cfg("dpo"), inputs={"policy": str(sft_out[0]), "data": tiny_assets["pairs"]},
                     output=out, seed=0, progress=False, extra={"beta": 0.3})
    assert meta["metrics"]["beta"] == 0.3
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert changed(load_policy(sft_out[0]), load_policy(out)) > 0.5


@pytest.mark.trl_latest
@pytest.mark.parametrize("name", ["rloo", "grpo"])
def test_group_rl_trains_against_the_reward_model_with_kl_to_the_given_reference(name, sft_out, rm_out, tiny_assets,
                                                                                tmp_path):
    """RLOO / GRPO (TRL's trainers) against our RM: the loop's beta is theirs, and the KL term is against
    io.ref, not against the policy they start from (TRL's own choice). With io.ref the untrained init
    policy the first step's KL is far above the same run's with io.ref the policy itself (about 0)."""
    first_kl = {}
    for ref in ("init", "self"):
        out = tmp_path / f"{name}_{ref}"
        meta = run_stage(name, cfg=stage_cfg(name), inputs={
            "policy": str(sft_out[0]), "ref": tiny_assets["policy"] if ref == "init" else str(sft_out[0]),
            "reward_model": str(rm_out), "data": tiny_assets["prompts"]}, output=out, seed=0, progress=False,
            extra={"beta": 0.2})
        m = meta["metrics"]
        assert m["beta"] == 0.2 and m["global_step"] == 2
        assert math.isfinite(m["loss"]) and math.isfinite(m["rewards/reward_model/mean"])
        assert changed(load_policy(sft_out[0]), load_policy(out)) > 0.5
        first_kl[ref] = m["first_kl"]
    assert first_kl["self"] < 1e-6 < first_kl["init"] and first_kl["init"] > 1e-3, first_kl


@pytest.mark.trl_latest
def test_group_rl_penalises_a_completion_without_eos(sft_out, rm_out):
    from rlhf_ops.models import load_tokenizer
    from rlhf_ops.stages.group_rl import RewardFunction

    tok = load_tokenizer(str(sft_out[0]))
    f = RewardFunction(str(rm_out), tok, "mean", 1.0, 1.0, False, max_length=128)
    eos = tok.eos_token_id
    r = f(["a prompt"] * 2, ["same text", "same text"], completion_ids=[[5, 6, eos], [5, 6, 7]])
    assert r[0] - r[1] == pytest.approx(1.0), "the same text, cut off before EOS, scores the penalty lower"


@pytest.mark.trl_latest
def test_best_of_n_picks_the_rms_favourite_that_ended_per_prompt(rm_out):
    import pandas as pd

    from rlhf_ops.loop.iteration import best_of_n
    from rlhf_ops.scoring import load_scorer, member_scores

    texts = ["The food was good and the staff were kind.", "bad bad bad bad", "It was fine, I think.",
             "Great service, great place, I will come back.", "no", ""]
    df = pd.DataFrame([{"prompt": f"Review place {p}.", "prompt_id": f"p{p}", "completion": t, "ended": e,
                        "empty": t == ""} for p in range(2) for t, e in zip(texts, [True, True, True, False, True, True])])
    best = best_of_n(df, str(rm_out), "mean", 1.0)
    assert sorted(best["prompt_id"]) == ["p0", "p1"]
    assert best["ended"].all() and (best["completion"] != "").all(), "a cut-off or empty completion never wins"
    eligible = df[df["ended"] & ~df["empty"]]
    model, tok = load_scorer(str(rm_out))
    eligible = eligible.assign(s=member_scores(model, tok, eligible["prompt"].tolist(),
                                               eligible["completion"].tolist()).mean(1))
    want = eligible.sort_values("s", ascending=False).groupby("prompt_id").head(1)
    assert dict(zip(want["prompt_id"], want["completion"])) == dict(zip(best["prompt_id"], best["completion"]))


@pytest.mark.trl_latest
def test_best_of_n_cli_keeps_the_rms_best_sample_per_prompt_and_overwrites_nothing(sft_out, rm_out, tiny_assets,
                                                                                   tmp_path):
    import subprocess
    import sys

    import pandas as pd

    from conftest import REPO

    out, every = tmp_path / "best.parquet", tmp_path / "all.jsonl"
    cmd = [sys.executable, "-m", "rlhf_ops.bon", "--policy", str(sft_out[0]), "--reward-model", str(rm_out),
           "--prompts", tiny_assets["prompts"], "--n", "4", "--max-new-tokens", "12", "--out", str(out),
           "--all", str(every)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    best, samples = pd.read_parquet(out), pd.read_json(every, lines=True)
    n_prompts = len(pd.read_parquet(tiny_assets["prompts"]))
    assert len(best) == n_prompts and len(samples) == 4 * n_prompts
    for _, b in best.iterrows():
        mine = samples[samples["prompt_index"] == b["prompt_index"]]
        eligible = mine[mine["ended"]] if mine["ended"].any() else mine
        assert b["score"] == pytest.approx(eligible["score"].max())
        assert b["max_score_of_n"] >= b["score"] - 1e-9
    ended_all = best.groupby("prompt_index").size()  # a prompt whose samples all ended: its best is the max
    assert ended_all.sum() == n_prompts
    assert "gain +" in p.stdout
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


@pytest.mark.trl_latest
@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_max_length_that_leaves_no_pair_is_one_error_naming_it(stage, sft_out, tiny_assets, tmp_path):
    """TRL drops, without a word, a reward pair longer than max_length and a DPO pair whose prompt fills it: with
    none left, training failed in the dataloader ("num_samples=0"); now one error names the key, and no output."""
    key = {"reward": "reward_model", "dpo": "policy"}[stage]
    out = tmp_path / stage
    # The reward stage sees it in its input check, before a model is loaded (the file named, the shortest pair's
    # length); DPO, whose truncation rules are TRL's, after TRL prepared the pairs.
    with pytest.raises(ValueError, match=rf"stage\.{stage}\.max_length=4.* TRL's (RewardTrainer|DPOTrainer) drops "
                                         rf"such pairs.*raise stage\.{stage}\.max_length"):
        run_stage(stage, cfg=stage_cfg(stage, max_length=4), inputs={key: str(sft_out[0]), "data": tiny_assets["pairs"]},
                  output=out, seed=0, progress=False)
    assert not out.exists()


@pytest.mark.trl_latest
def test_reward_pairs_longer_than_max_length_are_counted_in_the_log(sft_out, tiny_assets, tmp_path, caplog):
    import numpy as np

    from rlhf_ops.models import load_tokenizer
    from rlhf_ops.stages.reward import read_pairs, split_heldout

    tok = load_tokenizer(str(sft_out[0]))
    train, _ = split_heldout(read_pairs(tiny_assets["pairs"], tok), stage_cfg("reward")["eval_fraction"], 0)
    longest = [max(len(tok(p + c + tok.eos_token)["input_ids"]) for c in (ch, rj))
               for p, ch, rj in zip(train["prompt"], train["chosen"], train["rejected"])]
    max_length = int(np.median(longest))
    dropped = sum(n > max_length for n in longest)
    assert 0 < dropped < len(train)
    with caplog.at_level("INFO", logger="rlhf_ops.stages.trl_compat"):
        run_stage("reward", cfg=stage_cfg("reward", max_length=max_length), inputs={
            "reward_model": str(sft_out[0]), "data": tiny_assets["pairs"]}, output=tmp_path / "rm", seed=0, progress=False)
    assert f"stage.reward.max_length={max_length}: {dropped} of {len(train)} pairs dropped by TRL's RewardTrainer" \
        in caplog.text
