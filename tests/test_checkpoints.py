"""A model directory is checked from its JSON and safetensors headers alone (no torch, no model built),
so a bad one fails at start-up in one line naming it, before any work."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import TINY, run_cli
from rlhf_ops.artifacts import InputError
from rlhf_ops.checkpoints import check_checkpoint_dir


@pytest.fixture
def model_dir(tiny_assets, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_assets["policy"], d)
    return d


def test_a_good_directory_passes(model_dir):
    assert check_checkpoint_dir(model_dir, "policy", tokenizer=True) == model_dir


def test_truncated_weights_are_refused(model_dir):
    (w,) = model_dir.glob("*.safetensors")
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"model\.safetensors: the header describes \d+ bytes of tensors, the file "
                                         r"has \d+: truncated"):
        check_checkpoint_dir(model_dir, "policy")
    w.write_bytes(data[:5])
    with pytest.raises(InputError, match="too short to be a safetensors file"):
        check_checkpoint_dir(model_dir, "policy")


def test_empty_weights_are_refused(model_dir):
    """What a model sharded by ZeRO-3 saves when its weights are not gathered: every tensor 0 elements. It would
    load as a freshly initialised model (transformers reports a size mismatch and re-initialises)."""
    from safetensors.torch import load_file, save_file

    (w,) = model_dir.glob("*.safetensors")
    tensors = load_file(w)
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name].new_empty(0)}, w)
    with pytest.raises(InputError, match=rf"model\.safetensors: 1 of its {len(tensors)} tensors are empty "
                                         rf"\(e\.g\. {re.escape(name)}, shape \[0\]\): weights saved from one "
                                         "process's ZeRO-3 shard"):
        check_checkpoint_dir(model_dir, "policy")


@pytest.mark.parametrize("key, value, expected", [
    ("hidden_size", 128, "says hidden_size=128, but the weights' model.embed_tokens.weight is"),
    ("num_hidden_layers", 4, "says 4 layers, the weights hold 2"),
    ("vocab_size", 50000, "says vocab_size=50000"),
])
def test_a_config_of_another_architecture_is_refused(model_dir, key, value, expected):
    """Loaded anyway, mismatched weights would leave a randomly initialised model that trains and is published."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg[key] = value
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=expected + ".*does not describe these weights"):
        check_checkpoint_dir(model_dir, "policy")


def test_missing_tokenizer_and_missing_ensemble_member(model_dir, tmp_path):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / f).unlink(missing_ok=True)
    with pytest.raises(InputError, match="has no tokenizer"):
        check_checkpoint_dir(model_dir, "model.path", tokenizer=True)
    ens = tmp_path / "ens"
    shutil.copytree(model_dir, ens / "member_0")
    (ens / "ensemble.json").write_text(json.dumps({"members": ["member_0", "member_1"]}))
    with pytest.raises(InputError, match="ensemble member 'member_1' checkpoint not found"):
        check_checkpoint_dir(ens, "reward model")


def test_a_bad_model_dir_fails_at_start_up_and_touches_nothing(model_dir, tmp_path):
    (w,) = model_dir.glob("*.safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    before = sorted(p.name for p in model_dir.iterdir())
    p = run_cli("+experiment=quickstart", *TINY, "model=local", f"model.path={model_dir}", f"run_dir={run_dir}")
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().startswith("rlhf_ops: config error: model.path checkpoint") and "truncated" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert sorted(q.name for q in run_dir.iterdir()) == ["notes.txt"]
    assert sorted(q.name for q in model_dir.iterdir()) == before
