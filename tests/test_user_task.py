"""A user's own model and data through the whole loop (task=files, model=local): PPO with the
reward-model labeler, iterative DPO with the human file queue and no seed pairs; and that no
module outside the task packages imports the testbed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, TINY_RUN, TINY_TASK, run_cli
from user_data import make_user_files, make_user_model, user_texts


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    files = make_user_files(d)
    return {**files, "model": make_user_model(d, user_texts(files)), "dir": d}


def files_args(user, *extra):
    return ["task=files", f"task.prompts={user['prompts']}", "model=local", f"model.path={user['model']}",
            *TINY_RUN, "loop.iterations=1", *extra]


def test_user_model_and_files_online_ppo(user, tmp_path):
    run_dir = tmp_path / "ppo"
    before = {p: Path(p).read_bytes() for p in (user["prompts"], user["sft"], user["pairs"])}
    p = run_cli("+experiment=quickstart", *files_args(user, f"task.sft={user['sft']}", f"task.pairs={user['pairs']}",
                                                       "loop.labeler=reward_model", f"run_dir={run_dir}"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and len(s["iterations"]) == 1
    it = s["iterations"][0]
    assert it["gold"] is None and isinstance(it["proxy"], float) and isinstance(it["kl"], float)
    assert any("no gold" in c for c in it["skipped_checks"]), it["skipped_checks"]
    # The pad == EOS tokenizer got a distinct pad in a fixed copy inside the run dir; the user's model is untouched.
    init = run_dir / "setup" / "prepare" / "init_policy"
    cfg = json.loads((init / "tokenizer_config.json").read_text())
    assert cfg["pad_token"] == "<|endoftext|>" and cfg["eos_token"] == "<|im_end|>"
    assert json.loads((Path(user["model"]) / "tokenizer_config.json").read_text())["pad_token"] == "<|im_end|>"
    assert "pad token" in p.stdout + p.stderr
    # Conversational prompts went through the chat template; the user's own text is kept beside it.
    prompts = pd.read_parquet(run_dir / "setup" / "prepare" / "prompts_train.parquet")
    assert prompts["prompt"].str.startswith("<|im_start|>user\nTell me about").all()
    assert prompts["prompt"].str.endswith("<|im_start|>assistant\n").all()
    evals = pd.read_parquet(run_dir / "setup" / "prepare" / "prompts_gold_eval.parquet")
    assert not set(evals["prompt_source"]) & set(prompts["prompt_source"]), "evaluation prompts are held out"
    pairs = pd.read_parquet(run_dir / "iter_000" / "label" / "pairs.parquet")
    assert len(pairs) and pairs["gold_chosen"].isna().all() and set(pairs["labeler"]) != {"human"}
    # The RM labelled the fresh pairs itself, so its refresh is judged on the held-out seed pairs, not on them.
    val = pd.read_parquet(run_dir / "iter_000" / "rm_update" / "fresh_val.parquet")
    held = pd.read_parquet(run_dir / "setup" / "prepare" / "heldout_pairs.parquet")
    assert len(val) == len(held) > 0 and set(val["chosen"]) == set(held["chosen"])
    assert {p: Path(p).read_bytes() for p in before} == before, "the user's files are never written"
    from rlhf_ops.report import make_report

    make_report(run_dir)
    assert "<b>no gold</b>" in (run_dir / "report.html").read_text(), "the report says so instead of failing"


@pytest.mark.trl_latest
def test_user_model_and_files_online_grpo(user, tmp_path):
    """GRPO (TRL's GRPOTrainer) in the loop on the user's model, chat prompts and pairs: the policy update
    ran against the RM the loop trained, and the gate saw a candidate."""
    run_dir = tmp_path / "grpo"
    p = run_cli("+experiment=tiny_online_grpo", *files_args(user, f"task.sft={user['sft']}",
                f"task.pairs={user['pairs']}", "loop.labeler=reward_model", f"run_dir={run_dir}"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and len(s["iterations"]) == 1
    meta = json.loads((run_dir / "iter_000" / "policy_update" / "policy" / "stage_meta.json").read_text())
    assert meta["stage"] == "grpo" and meta["inputs"]["ref"].endswith("setup/sft/policy")
    assert meta["metrics"]["global_step"] == 2 and "rewards/reward_model/mean" in meta["metrics"]
    assert isinstance(s["iterations"][0]["kl"], float)


@pytest.mark.trl_latest
def test_user_model_and_files_rejection_sampling(user, tmp_path):
    """Rejection sampling on the user's chat model: SFT on the RM's best of 4 collected completions."""
    run_dir = tmp_path / "rs"
    p = run_cli("+experiment=tiny_rejection_sampling", *files_args(user, f"task.sft={user['sft']}",
                f"task.pairs={user['pairs']}", "loop.labeler=reward_model", f"run_dir={run_dir}"))
    assert p.returncode == 0, p.stderr[-3000:]
    step = run_dir / "iter_000" / "policy_update"
    best = pd.read_parquet(step / "best_of_n.parquet")
    collected = pd.read_parquet(run_dir / "iter_000" / "collect" / "completions.parquet")
    assert len(best) == collected["prompt_id"].nunique() and best["prompt_id"].is_unique
    assert best["prompt"].str.startswith("<|im_start|>user").all()
    meta = json.loads((step / "policy" / "stage_meta.json").read_text())
    assert meta["stage"] == "rejection_sampling" and meta["metrics"]["global_step"] == 3


@pytest.mark.trl_latest
def test_user_files_iterative_dpo_with_human_queue_and_no_seed_pairs(user, tmp_path):
    run_dir = tmp_path / "dpo"
    args = ["+experiment=tiny_iterative_dpo", *files_args(user, "loop.labeler=human", f"run_dir={run_dir}")]
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "waiting for human labels" in p.stdout
    assert "no SFT data" in p.stdout + p.stderr and "no reward-model warm-up" in p.stdout + p.stderr
    queue = run_dir / "human_queue" / "iter_000"
    pending = [json.loads(line) for line in (queue / "to_label.jsonl").read_text().splitlines()]
    assert len(pending) >= 4
    (queue / "labels.jsonl").write_text("".join(
        json.dumps({"pair_id": r["pair_id"], "choice": "a" if len(r["a"]) < len(r["b"]) else "b"}) + "\n"
        for r in pending))
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["iterations"][0]["gold"] is None
    assert s["baseline"]["proxy"] is None, "no reward model before the first labels"
    assert (run_dir / "iter_000" / "rm_update" / "rm").is_dir(), "the first labels trained the first RM"


@pytest.mark.parametrize("extra, needle", [
    (["loop.labeler=annotator"], "has no simulated annotator"),
    (["loop.labeler=reward_model"], "without task.pairs"),
    (["io.data=x.jsonl"], "io.data"),
    (["task.prompts=/nonexistent/prompts.jsonl"], "task.prompts: no such file"),
    (["model.path=/etc/hostname"], "is a file, not a checkpoint directory"),
])
def test_user_task_bad_choices_fail_at_start(user, tmp_path, extra, needle):
    p = run_cli("+experiment=quickstart", *files_args(user, *extra, f"run_dir={tmp_path / 'r'}"), timeout=120)
    assert p.returncode == 2 and needle in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def test_core_never_imports_a_task_package():
    pkg = REPO / "rlhf_ops"
    offenders = []
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg).as_posix()
        if rel.startswith("tasks/reviews/") or rel == "tasks/files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                if "testbed" in n or "tasks.reviews" in n or "tasks.files" in n or \
                        (isinstance(node, ast.ImportFrom) and node.level and n.startswith(("reviews", "files"))):
                    offenders.append(f"{rel}: {n}")
    assert not offenders, offenders


def test_a_model_converted_from_gguf_with_its_quantization_config_left_in_is_named(user, tmp_path):
    import shutil

    model = tmp_path / "converted"
    shutil.copytree(user["model"], model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gguf"}}))
    p = run_cli("+experiment=quickstart", *files_args(user, f"model.path={model}", "loop.labeler=human",
                                                     f"run_dir={tmp_path / 'r'}"),
                timeout=120)
    assert p.returncode == 2 and "quantization_config.quant_method=gguf" in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith("rlhf_ops: config error: model.path checkpoint"), "refused at start-up"
    assert not (tmp_path / "r").exists(), "before anything is written"
    assert json.loads((model / "config.json").read_text())["quantization_config"], "the user's files are left alone"


def test_a_base_model_outside_the_run_dir_that_changed_is_refused_on_resume(user, tmp_path):
    """With no SFT data the user's model is the policy and the reference of every iteration, read from
    where it lies: its content hash is recorded when the run first uses it. Changed in place while the
    run was stopped: the resume is refused naming the directory; restored: the run goes on."""
    import shutil

    model = tmp_path / "my-model"
    shutil.copytree(user["model"], model)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # a distinct pad: no fixed copy is made
        f = model / name
        if f.is_file():
            f.write_text(json.dumps({**json.loads(f.read_text()), "pad_token": "<|endoftext|>"}))
    run_dir = tmp_path / "run"
    args = ["+experiment=quickstart", *files_args(user, f"model.path={model}", "loop.labeler=reward_model",
                                                 f"task.pairs={user['pairs']}", f"run_dir={run_dir}")]
    p = run_cli(*args, env={"RLHF_OPS_FAULT": "0:policy_update:before"})
    assert p.returncode == 137, p.stderr[-2000:]
    config = model / "config.json"
    original = config.read_bytes()
    config.write_text(json.dumps({**json.loads(original), "rope_theta": 12345.0}))
    p = run_cli(*args)
    assert p.returncode == 1, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert str(model) in line and "changed (sha256" in line and "allow_config_change=true" in line, line
    step_dir = run_dir / "iter_000" / "policy_update"
    assert not step_dir.exists() or not any(step_dir.iterdir()), "nothing ran"
    config.write_bytes(original)
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def _task(tmp_path, prompts: list, **kw):
    from rlhf_ops.tasks.files import FilesTask

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(kw.pop("raw", b"") or "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode())
    return FilesTask(prompts=str(path), **kw)


def test_the_copies_of_a_duplicated_prompt_land_on_one_side_of_the_split(tmp_path):
    """A prompt given five times must not be evaluated on while its copies are trained on."""
    distinct = [f"Tell me about topic {i}." for i in range(30)]
    prompts = distinct + [distinct[3]] * 4 + [distinct[17]] * 4
    for seed in range(8):
        td = _task(tmp_path, prompts, eval_fraction=0.2, seed=seed).load(0)
        train, held = set(td.train_prompts["prompt"]), set(td.eval_prompts["prompt"])
        assert not train & held, f"seed {seed}: {train & held}"
        assert len(td.train_prompts) + len(td.eval_prompts) == len(prompts), "every row kept, once"
    without = _task(tmp_path, distinct, eval_fraction=0.2, seed=1).load(0)
    assert len(without.eval_prompts) == 6 and len(without.train_prompts) == 24
    with pytest.raises(Exception, match=r"5 prompt\(s\), 1 distinct, cannot be split"):
        _task(tmp_path, ["the same"] * 5).load(0)


def test_evaluation_prompts_that_are_also_training_prompts_are_counted_once(tmp_path, caplog):
    prompts = [f"Prompt {i}" for i in range(10)]
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:3] + ["A new one"]))
    with caplog.at_level("WARNING"):
        _task(tmp_path, prompts, eval_prompts=str(evals)).load(0)
    shared = [r.getMessage() for r in caplog.records if "also training prompts" in r.getMessage()]
    assert len(shared) == 1 and "3 of 4 evaluation prompt(s)" in shared[0] and str(evals) in shared[0]


def test_a_byte_order_mark_is_accepted_and_a_latin1_byte_names_its_line(tmp_path):
    rows = "".join(json.dumps({"prompt": f"Prompt {i}"}) + "\n" for i in range(6)).encode()
    td = _task(tmp_path, [], raw=b"\xef\xbb\xbf" + rows).load(0)
    assert len(td.train_prompts) + len(td.eval_prompts) == 6 and td.train_prompts["prompt"].iloc[0].startswith("Prompt")
    with pytest.raises(Exception, match=r"prompts.jsonl.*line 7: not UTF-8 text"):
        _task(tmp_path, [], raw=rows + '{"prompt": "caf\xe9"}\n'.encode("latin-1")).load(0)


def test_the_shipped_instruction_set_is_what_its_script_writes_and_reads_as_user_data(tmp_path):
    """data/instructions/ (the SmolLM2 experiment's prompts and anchors) is scripts/make_instructions.py's
    output, 300 distinct instructions and 24 anchors, and reads through the files task's own readers."""
    import importlib.util

    from rlhf_ops.formats import normalize_prompts, normalize_sft, read_any

    spec = importlib.util.spec_from_file_location("make_instructions", REPO / "scripts" / "make_instructions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shipped = REPO / "data" / "instructions"
    for name, rows in (("prompts.jsonl", mod.prompts()), ("anchors.jsonl", mod.anchors())):
        want = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert (shipped / name).read_text(encoding="utf-8") == want, f"rerun scripts/make_instructions.py ({name})"
    prompts = normalize_prompts(read_any(str(shipped / "prompts.jsonl"), "prompts"), shipped / "prompts.jsonl")
    assert len(prompts) == 300 and prompts["prompt"].map(json.dumps).is_unique
    anchors = normalize_sft(read_any(str(shipped / "anchors.jsonl"), "SFT"), shipped / "anchors.jsonl")
    assert len(anchors) == 24


def test_the_testbed_on_a_chat_model_labels_the_rendered_prompts(user, tmp_path):
    """A real chat model on the testbed (to try a loop setting before using one's own data): the prompts are
    rendered with the model's chat template, the simulated annotator and the gold reward read the testbed's
    own prompt behind each, and the pairs keep the rendered prompt the policy saw."""
    run_dir = tmp_path / "testbed_chat"
    args = ["+experiment=quickstart", *TINY_TASK, *TINY_RUN, "model=local", f"model.path={user['model']}",
            "loop.iterations=1"]
    # The chat template and a tokenizer trained on other text make every seed pair longer than the tiny preset's 96
    # tokens: refused in prepare, naming the key, before SFT trains (TRL's reward trainer would drop all of them).
    p = run_cli(*args, f"run_dir={tmp_path / 'short'}")
    assert p.returncode != 0 and "stage.reward.max_length=96" in p.stderr and "setup_prepare" in p.stderr, p.stderr
    assert not (tmp_path / "short" / "setup" / "sft").exists()
    p = run_cli(*args, "stage.reward.max_length=256", "stage.sft.max_length=256", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    pairs = pd.read_parquet(run_dir / "iter_000" / "label" / "pairs.parquet")
    assert len(pairs) and pairs["prompt"].str.startswith("<|im_start|>user\n").all()
    assert pairs["gold_chosen"].notna().all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["baseline"]["gold"] is not None and summary["iterations"][0]["gold"] is not None
