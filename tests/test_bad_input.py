"""Bad input fails with a clear error naming the file, row or key, before any training starts,
and nothing already on disk is lost."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from conftest import stage_cfg
from rlhf_ops.artifacts import InputError, OutputExistsError, write_table
from rlhf_ops.launcher import run_stage


def sft(tiny_assets, data, output, **kw):
    return run_stage("sft", cfg=stage_cfg("sft", max_steps=1), inputs={"policy": tiny_assets["policy"], "data": data},
                     output=output, seed=0, progress=False, **kw)


def test_missing_dataset_file(tiny_assets, tmp_path):
    with pytest.raises(InputError, match="not found: .*nope.parquet"):
        sft(tiny_assets, str(tmp_path / "nope.parquet"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_empty_dataset_file(tiny_assets, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty.*empty.jsonl"):
        sft(tiny_assets, str(tmp_path / "empty.jsonl"), tmp_path / "out")


def test_preference_rows_missing_column_or_empty_text(tiny_assets, tmp_path):
    pairs = pd.read_json(tiny_assets["pairs"], lines=True)
    no_rejected = write_table(pairs.drop(columns=["rejected"]), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: missing column\(s\) \['rejected'\]"):
        run_stage("dpo", cfg=stage_cfg("dpo"), inputs={"policy": tiny_assets["policy"], "data": str(no_rejected)},
                  output=tmp_path / "o1", seed=0)
    blank = pairs.copy()
    blank.loc[5, "chosen"] = "   "
    blank_path = write_table(blank, tmp_path / "b.jsonl")
    with pytest.raises(InputError, match="b.jsonl: row 5: column 'chosen' is empty"):
        run_stage("reward", cfg=stage_cfg("reward"), inputs={"reward_model": tiny_assets["policy"],
                  "data": str(blank_path)}, output=tmp_path / "o2", seed=0)


def test_tokenizer_without_pad_token(tiny_assets, tmp_path):
    bad = tmp_path / "nopad"
    shutil.copytree(tiny_assets["policy"], bad)
    cfg_path = bad / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("pad_token", None)
    cfg_path.write_text(json.dumps(tc))
    special = bad / "special_tokens_map.json"
    if special.exists():
        sm = json.loads(special.read_text())
        sm.pop("pad_token", None)
        special.write_text(json.dumps(sm))
    with pytest.raises(InputError, match="has no pad token"):
        run_stage(
            "sft", cfg=stage_cfg("sft"), inputs={"policy": str(bad), "data": tiny_assets["sft"]},
            output=tmp_path / "out", seed=0)


def test_reward_model_with_other_vocabulary_refused_by_ppo_scored_as_text_by_rloo(tiny_assets, tmp_path):
    from omegaconf import OmegaConf

    from rlhf_ops.config import ModelConfig
    from rlhf_ops.models import build_tiny_reward, save_model, train_tokenizer

    other_tok = train_tokenizer(["completely different words here"] * 50, 300)
    rm = build_tiny_reward(OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64)), other_tok, 0)
    save_model(rm, other_tok, tmp_path / "other_rm")
    with pytest.raises(InputError, match="different vocabulary than the policy"):
        run_stage("ppo", cfg=stage_cfg("ppo"), inputs={"policy": tiny_assets["policy"],
                  "reward_model": str(tmp_path / "other_rm"), "data": tiny_assets["prompts"]},
                  output=tmp_path / "ppo", seed=0)
    assert not (tmp_path / "ppo").exists()
    # RLOO scores decoded text with the RM's own tokenizer: an RM of another vocabulary is a valid reward there.
    meta = run_stage("rloo", cfg=stage_cfg("rloo"), inputs={"policy": tiny_assets["policy"],
                     "reward_model": str(tmp_path / "other_rm"), "data": tiny_assets["prompts"]},
                     output=tmp_path / "rloo", seed=0, progress=False)
    assert meta["metrics"]["global_step"] == 2 and "reward" in meta["metrics"]


def test_prompt_longer_than_the_model_allows(tiny_assets, tmp_path):
    rows = pd.read_parquet(tiny_assets["prompts"])
    rows.loc[3, "prompt"] = "word " * 400
    path = write_table(rows, tmp_path / "long.parquet")
    with pytest.raises(InputError, match="long.parquet: row 3: prompt is .* tokens"):
        run_stage("ppo", cfg=stage_cfg("ppo"), inputs={"policy": tiny_assets["policy"],
                  "reward_model": tiny_assets["policy"], "data": str(path)}, output=tmp_path / "ppo", seed=0)


def test_finished_output_is_refused_unless_overwrite(tiny_assets, tmp_path):
    out = tmp_path / "sft"
    first = sft(tiny_assets, tiny_assets["sft"], out)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="already holds a finished stage.*overwrite=true"):
        sft(tiny_assets, tiny_assets["sft"], out)
    assert (out / "model.safetensors").read_bytes() == weights, "the refused run must not touch the outputs"
    second = sft(tiny_assets, tiny_assets["sft"], out, overwrite=True)
    assert second["finished_at"] >= first["finished_at"]
    assert not list(tmp_path.glob("sft.*")), "no .tmp/.old leftovers after an overwrite"


def test_failed_training_leaves_previous_output_intact(tiny_assets, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    sft(tiny_assets, tiny_assets["sft"], out)
    weights = (out / "model.safetensors").read_bytes()

    def boom(spec):
        raise RuntimeError("simulated crash inside training")

    from rlhf_ops.stages import sft as sft_stage

    monkeypatch.setattr(sft_stage, "train", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft(tiny_assets, tiny_assets["sft"], out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "sft.tmp").exists()


def test_loop_refuses_prompts_too_long_for_the_context_before_any_training(tmp_path):
    """In the loop the check runs in `prepare`, before SFT, not in the first policy update."""
    from conftest import TINY, run_cli

    run_dir = tmp_path / "run"
    p = run_cli("+experiment=quickstart", *TINY, "model.max_position_embeddings=24", f"run_dir={run_dir}")
    assert p.returncode == 1
    assert "prompts_train.parquet: row 0: prompt is" in p.stderr and "longer than the 8 allowed" in p.stderr
    assert not (run_dir / "setup" / "sft").exists(), "nothing was trained"


def test_a_run_dir_of_someone_elses_files_is_refused_and_left_alone(tmp_path):
    """A run dir that holds a user's files (their own config.yaml, summary.json) and no ledger is refused
    before anything is written; overwrite=true moves them aside, saying where, and never deletes them."""
    from conftest import TINY, run_cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("mine: 1\n")
    (run_dir / "summary.json").write_text('{"mine": true}')
    p = run_cli("+experiment=quickstart", *TINY, "loop.iterations=1", f"run_dir={run_dir}")
    assert p.returncode == 1, p.stderr[-2000:]
    assert "holds files that no run ledger accounts for (config.yaml, summary.json)" in p.stderr
    assert "ledger.sqlite is missing although a run's results are here" in p.stderr
    assert sorted(q.name for q in run_dir.iterdir()) == ["config.yaml", "summary.json"]
    assert (run_dir / "config.yaml").read_text() == "mine: 1\n"
    from rlhf_ops.loop.runner import claim_run_dir

    claim_run_dir(run_dir, overwrite=True)
    aside = tmp_path / "run.moved-aside-1"
    assert (aside / "config.yaml").read_text() == "mine: 1\n" and not list(run_dir.iterdir())


def test_a_ledger_without_its_progress_beside_results_is_refused(tmp_path):
    """A ledger copied without its WAL (where the commits were) looks empty: refused, not restarted over."""
    from rlhf_ops.artifacts import OutputExistsError
    from rlhf_ops.ledger import Ledger
    from rlhf_ops.loop.runner import check_ledger_matches_dir

    (tmp_path / "setup" / "sft").mkdir(parents=True)
    with Ledger(tmp_path) as ledger:
        check_ledger_matches_dir(tmp_path, ledger)  # an empty step dir (killed before its first commit) is fine
        (tmp_path / "setup" / "sft" / "model.safetensors").write_bytes(b"x")
        with pytest.raises(OutputExistsError, match="records no step, but the run dir holds a run's results "
                                                    r"\(setup\).*ledger.sqlite-wal"):
            check_ledger_matches_dir(tmp_path, ledger)


def test_an_existing_folder_of_the_users_is_not_a_stage_output(tiny_assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    data = str(tiny_assets["sft"])
    with pytest.raises(OutputExistsError, match="holds files rlhf_ops did not write"):
        run_stage("sft", cfg=stage_cfg("sft", max_steps=1), inputs={"policy": tiny_assets["policy"], "data": data},
                  output=out, seed=0, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    run_stage("sft", cfg=stage_cfg("sft", max_steps=1), inputs={"policy": tiny_assets["policy"], "data": data},
              output=out, seed=0, progress=False, overwrite=True)
    (aside,) = tmp_path.glob("out.moved-aside-*")
    assert (aside / "notes.txt").read_text() == "mine" and (out / "stage_meta.json").is_file()
