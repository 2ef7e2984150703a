"""The LLM judge as a user runs it: a small chat model they trained as a judge (tests/user_data.py),
locally and behind a real `python -m rlhf_ops.serve`; the order-debiasing, the verdict cache, the
server faults the HTTP client must name; and the statistics of the gate (betting confidence
sequence, length-controlled win rate)."""

from __future__ import annotations

import json
from pathlib import Path
import random
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from rlhf_ops.artifacts import InputError
from rlhf_ops.control.ab_test import BettingCS, length_controlled_win_rate, sequential_decision
from rlhf_ops.labelers.judge import (HTTPJudge, Judge, JudgeError, JudgeLabeler, LocalJudge, VerdictCache, combine,
                                     question_text)
from user_data import BAD, GOOD, JUDGE_RUBRIC, TOPICS, make_judge_model, make_user_files, user_texts
from test_serve import _start, _wait_url


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("judge")
    return make_judge_model(d, user_texts(make_user_files(d)))


def _items(n: int, seed: int = 5):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(TOPICS)
        out.append((f"Tell me about {t}.", rng.choice(GOOD).format(t=t), rng.choice(BAD).format(t=t)))
    return out


def test_combine_cancels_position_bias_and_calls_a_position_preference_a_tie():
    v = combine(0.9, 0.2, 0.05)  # a first: 0.9; b first: b wins 0.2 -> a wins 0.8
    assert v.p_a == pytest.approx(0.85) and not v.tie and v.outcome == 1.0
    assert v.position_bias == pytest.approx(0.05)
    v = combine(0.9, 0.9, 0.05)  # the first slot wins in both orders: a position, not an answer
    assert v.tie and v.p_a == pytest.approx(0.5) and v.position_bias == pytest.approx(0.4)
    assert combine(0.52, 0.49, 0.05).tie  # too close to call
    assert question_text(json.dumps([{"role": "user", "content": "Hi there"}])) == "Hi there"
    assert question_text("[not json") == "[not json"


def test_local_judge_prefers_the_good_answer_in_either_order_and_caches(judge_dir, tmp_path):
    cache = VerdictCache(tmp_path / "verdicts.sqlite")
    judge = Judge(LocalJudge(judge_dir), rubric=JUDGE_RUBRIC, cache=cache)
    items = _items(24)
    v = judge.compare(items)
    assert judge.calls == 48 and judge.cached == 0
    acc = np.mean([x.p_a > 0.5 for x in v])
    assert acc >= 0.9, acc  # a trained judge, so it can fail: measured 1.0 over 40 items
    swapped = judge.compare([(q, b, a) for q, a, b in items])
    assert judge.calls == 48 and judge.cached == 48, "the swapped comparison asks the same two prompts"
    np.testing.assert_allclose([s.p_a for s in swapped], [1 - x.p_a for x in v], atol=1e-9)
    again = Judge(LocalJudge(judge_dir), rubric=JUDGE_RUBRIC, cache=VerdictCache(tmp_path / "verdicts.sqlite"))
    again.compare(items[:5])
    assert again.calls == 0 and again.cached == 10, "verdicts persist in the run dir's cache"
    other = Judge(LocalJudge(judge_dir), rubric="Another rubric.", cache=VerdictCache(tmp_path / "verdicts.sqlite"))
    other.compare(items[:2])
    assert other.calls == 4, "another rubric is another question"


def test_judge_labeler_pairs_good_over_bad_and_copeland_with_more_candidates(judge_dir):
    judge = Judge(LocalJudge(judge_dir), rubric=JUDGE_RUBRIC)
    rows, cands = [], []
    for i, t in enumerate(TOPICS[:6]):
        rows.append({"prompt": f"<rendered {i}>", "prompt_id": f"p{i}"})
        cands.append([BAD[i % 3].format(t=t), GOOD[i % 2].format(t=t)] + ([BAD[(i + 1) % 3].format(t=t)] if i % 2 else []))
    questions = {f"<rendered {i}>": f"Tell me about {t}." for i, t in enumerate(TOPICS[:6])}
    pairs = JudgeLabeler(judge, questions).label(rows, cands, iteration=0, checkpoint="ck")
    assert len(pairs) >= 5
    assert pairs["chosen"].isin([g.format(t=t) for g in GOOD for t in TOPICS]).mean() >= 0.8
    assert pairs["labeler"].str.startswith("judge:local:").all() and pairs["pair_id"].is_unique


@pytest.fixture(scope="module")
def served_judge(judge_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("served_judge")
    s = _start(judge_dir, d, "judge", "--max-batch", "8")
    try:
        yield _wait_url(s)
    finally:
        s["proc"].send_signal(signal.SIGTERM)
        try:
            s["proc"].wait(30)
        except subprocess.TimeoutExpired:
            s["proc"].kill()


def test_http_judge_against_a_real_server_agrees_with_the_local_judge(judge_dir, served_judge):
    items = _items(10, seed=9)
    local = Judge(LocalJudge(judge_dir), rubric=JUDGE_RUBRIC).compare(items)
    backend = HTTPJudge(served_judge + "/v1", model="my-judge", concurrency=4)
    backend.probe()
    remote = Judge(backend, rubric=JUDGE_RUBRIC).compare(items)
    np.testing.assert_allclose([r.p_a for r in remote], [x.p_a for x in local], atol=2e-3)
    assert backend.requests == 21 and backend.unparsed == 0  # the probe and two orders of ten
    assert backend.prompt_tokens > 0 and backend.completion_tokens >= 20


class _Faulty(BaseHTTPRequestHandler):
    """A server that misbehaves the way real ones do: plan is a list of (status, body) answered in turn."""

    plan: list = []
    seen: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.plan.pop(0) if self.plan else (200, _ok("A"))
        type(self).seen.append(status)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def _ok(letter: str, p: float = 0.8) -> dict:
    other = "B" if letter == "A" else "A"
    tops = [{"token": letter, "logprob": float(np.log(p))}, {"token": other, "logprob": float(np.log(1 - p))}]
    return {"choices": [{"message": {"role": "assistant", "content": letter},
                         "logprobs": {"content": [{"token": letter, "logprob": float(np.log(p)), "top_logprobs": tops}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1}}


@pytest.fixture
def faulty():
    _Faulty.plan, _Faulty.seen = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Faulty
    srv.shutdown()
    srv.server_close()


def test_http_judge_retries_5xx_and_429_then_reads_logprobs(faulty):
    url, h = faulty
    h.plan = [(503, b"busy"), (429, b"slow down"), (200, _ok("A", 0.7))]
    j = HTTPJudge(url, retries=3, backoff_s=0.01, concurrency=1)
    assert j.first_wins([[{"role": "user", "content": "x"}]]) == [pytest.approx(0.7)]
    assert h.seen == [503, 429, 200] and j.requests == 3


@pytest.mark.parametrize("plan, needle", [
    ([(200, b"<html>oops</html>")] * 4, "not JSON"),
    ([(200, {"id": "x", "object": "chat.completion"})] * 4, "unexpected shape"),
    ([(400, b'{"error": "model not found"}')], "refused the request: HTTP 400"),
    ([(500, b"boom")] * 4, "did not answer after 2 attempt(s): HTTP 500"),
])
def test_http_judge_probe_names_the_address_and_what_went_wrong(faulty, plan, needle):
    url, h = faulty
    h.plan = list(plan)
    with pytest.raises(InputError, match="loop.judge.url") as e:
        HTTPJudge(url, retries=3, backoff_s=0.01).probe()
    assert needle in str(e.value) and url in str(e.value)


def test_http_judge_on_a_closed_port_and_a_text_only_server(faulty):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(InputError, match=f"127.0.0.1:{port}.*did not answer"):
        HTTPJudge(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01, timeout_s=2).probe()
    with pytest.raises(InputError, match="http:// or https://"):
        HTTPJudge("localhost:8000")
    url, h = faulty  # a server without logprobs: the greedy letter; neither letter: counted, 0.5
    h.plan = [(200, {"choices": [{"message": {"content": "B"}}]}), (200, {"choices": [{"message": {"content": "Sure!"}}]})]
    j = HTTPJudge(url, concurrency=1)
    assert j.first_wins([[{"role": "user", "content": "x"}]] * 2) == [0.0, 0.5] and j.unparsed == 1


def test_betting_confidence_sequence_covers_at_all_times_and_stops_early():
    rng = np.random.default_rng(0)
    misses = 0
    for r in range(100):
        cs = BettingCS(alpha=0.1, grid_size=399)
        bad = False
        for _ in range(150):
            cs.update(float(rng.random() < 0.6))
            bad |= not (cs.lo <= 0.6 <= cs.hi)
        misses += bad
    assert misses <= 18, misses  # at most alpha = 10% of whole paths (plus Monte Carlo slack); measured 3
    stops = []
    for r in range(20):
        cs = BettingCS(alpha=0.05)
        for t in range(1, 301):
            cs.update(float(rng.random() < 0.15))
            if sequential_decision(cs, 0.4) == "lost":
                stops.append(t)
                break
    assert len(stops) == 20 and np.median(stops) < 60, stops
    with pytest.raises(ValueError):
        BettingCS().update(1.5)


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(1)
    d = rng.normal(8, 10, 400)  # the candidate writes 8 words more on average
    p = 1 / (1 + np.exp(-1.5 * np.tanh(d / d.std())))  # a judge that likes length, answers otherwise equal
    lc, slope = length_controlled_win_rate(p, d)
    assert p.mean() > 0.6 and abs(lc - 0.5) < 0.03 and slope > 1.0
    q = 1 / (1 + np.exp(-(0.8 + 0 * d)))  # a real quality gap, no length effect: LC keeps it
    assert length_controlled_win_rate(q, d)[0] == pytest.approx(q.mean(), abs=0.01)


def _samples(completions, words, prompts=None):
    n = len(completions)
    return pd.DataFrame({"prompt": prompts or [f"p{i % 4}" for i in range(n)], "prompt_index": [i % 4 for i in range(n)],
                         "completion": completions, "words": words})


class _FixedJudge:
    """A fake judge for the gate's arithmetic only (unit test): P(candidate wins) from a function."""

    def __init__(self, fn):
        self.fn, self.calls, self.cached = fn, 0, 0

    def compare(self, items):
        from rlhf_ops.labelers.judge import Comparison

        self.calls += 2 * len(items)
        return [Comparison(self.fn(a, b), self.fn(a, b), 1 - self.fn(a, b), tie=False) for _, a, b in items]


def _gate(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{"test": "sequential", "alpha": 0.05, "max_comparisons": 64, "min_comparisons": 16,
                              "batch": 8, "length_controlled": True, "outcome": "soft",
                              "max_tie_rate": 0.8, **kw})


def test_head_to_head_stops_early_on_a_clear_loser_and_catches_a_win_by_length():
    from rlhf_ops.loop.judging import head_to_head

    n = 64
    base = _samples([f"b{i}" for i in range(n)], [10] * n)
    qs = [f"q{i}" for i in range(4)]
    loser = _samples([f"c{i}" for i in range(n)], [10] * n)
    out = head_to_head(_FixedJudge(lambda a, b: 0.05), _gate(), 0.4, loser, base, qs, seed=0)
    assert out["h2h_decision"] == "lost" and out["judge_comparisons"] < n and "stopped early" in out["h2h_reason"]
    # Longer answers win, equal-length ones lose: raw win rate high, length-controlled low.
    lens = [10 + (20 if i % 2 else 0) for i in range(n)]
    longer = _samples([f"c{i}" for i in range(n)], lens)
    judge = _FixedJudge(lambda a, b: 0.97 if int(a[1:]) % 2 else 0.2)
    out = head_to_head(judge, _gate(test="fixed"), 0.4, longer, base, qs, seed=0)
    assert out["win_rate"] > 0.5 and out["win_rate_lc"] < 0.4 and out["h2h_decision"] == "length", out
    assert out["judge_comparisons"] == n and judge.calls == 2 * n
    out = head_to_head(judge, _gate(test="fixed", length_controlled=False), 0.4, longer, base, qs, seed=0)
    assert out["h2h_decision"] == "pass"
    other = _samples([f"c{i}" for i in range(n)], [10] * n, prompts=[f"x{i}" for i in range(n)])
    assert head_to_head(judge, _gate(), 0.4, other, base, qs, seed=0)["h2h_decision"] == "skipped"


def test_gate_reads_the_judged_decision_and_remedies_a_win_by_length():
    from rlhf_ops.control.gate import Gate

    g = Gate([], min_win_rate=0.4)
    d = g.decide({"win_rate": 0.9, "h2h_decision": "length", "h2h_reason": "wins by length"}, {}, [])
    assert not d.accepted and d.remedies == ["raise_beta"] and "wins by length" in d.reasons
    d = g.decide({"win_rate": 0.3, "h2h_decision": "pass", "h2h_reason": "sequence above"}, {}, [])
    assert d.accepted, "the test's decision, not the point estimate, decides"
    d = g.decide({"win_rate": 0.45, "h2h_decision": "lost", "h2h_reason": "lost"}, {}, [])
    assert not d.accepted and d.remedies == ["lower_lr"]


def test_a_judge_prompt_longer_than_the_judges_context_is_cut_at_its_beginning(judge_dir, caplog):
    backend = LocalJudge(judge_dir)
    backend.max_len = 64
    long_q = "Tell me about coffee. " * 40
    p = backend.first_wins([[{"role": "user", "content": long_q + "A or B?"}]] * 2)
    assert len(p) == 2 and all(0 <= x <= 1 for x in p) and backend.truncated == 2
    assert "longer than its context" in caplog.text


# ---- the judge in the loop: a user's model, files and judge, through the CLI ----

from conftest import TINY_RUN, run_cli  # noqa: E402
from user_data import make_user_model, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def user(judge_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("user_for_judge")
    files = make_user_files(d)
    # A mixed SFT set (good and bad answers to each prompt), so the fine-tuned policy writes both kinds and
    # the judge has something to tell apart.
    rows = [{"prompt": f"Tell me about {t}.", "completion": c.format(t=t)} for t in TOPICS for c in GOOD + BAD]
    files["sft"] = str(write_jsonl(d / "mixed_sft.jsonl", rows))
    files["anchors"] = str(write_jsonl(d / "anchors.jsonl", [
        {"messages": [{"role": "user", "content": f"Tell me about {t}."},
                      {"role": "assistant", "content": GOOD[0].format(t=t)}]} for t in TOPICS[:4]]))
    return {**files, "model": make_user_model(d, user_texts(files)), "judge": judge_dir}


def _loop_args(user, run_dir, *extra):
    return ["+experiment=quickstart", "task=files", f"task.prompts={user['prompts']}", f"task.sft={user['sft']}",
            f"task.pairs={user['pairs']}", f"task.anchors={user['anchors']}", "model=local", f"model.path={user['model']}", *TINY_RUN,
            "loop.iterations=1", "loop.eval_samples_per_prompt=4", "loop.completions_per_prompt=4", "loop.min_pairs=2",
            "stage.sft.max_steps=60", "stage.sft.learning_rate=0.01",
            f"run_dir={run_dir}", *extra]


def test_loop_with_the_judge_labelling_and_gating_a_users_run(user, tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli(*_loop_args(user, run_dir, "loop.labeler=judge", f"loop.judge.model={user['judge']}",
                            f"loop.judge.rubric={JUDGE_RUBRIC}", "loop.gate.min_comparisons=4", "loop.gate.batch=4"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    it = s["iterations"][0]
    assert it["h2h_decision"] in ("pass", "lost", "length") and it["judge_calls"] >= 8, it
    assert 0 <= it["win_rate_lo"] <= it["win_rate"] <= it["win_rate_hi"] <= 1
    assert not any("head-to-head" in c for c in it["skipped_checks"]), it["skipped_checks"]
    pairs = pd.read_parquet(run_dir / "iter_000" / "label" / "pairs.parquet")
    assert len(pairs) and pairs["labeler"].str.startswith("judge:local:").all()
    ev = json.loads((run_dir / "iter_000" / "evaluate" / "eval.json").read_text())
    assert ev["judge_comparisons"] == it["judge_comparisons"] and "win_rate_lc" in ev
    assert ev["n_anchors"] == 4 and ev["anchor_nll"] > 0, "the user's capability anchors are scored"
    assert not any(c.startswith("capability_anchors") for c in it["skipped_checks"])
    assert (run_dir / "judge" / "verdicts.sqlite").is_file()
    # The same command with one more iteration resumes the run (the verdict cache beside the ledger is ours).
    p = run_cli(*_loop_args(user, run_dir, "loop.labeler=judge", f"loop.judge.model={user['judge']}",
                            f"loop.judge.rubric={JUDGE_RUBRIC}", "loop.gate.min_comparisons=4", "loop.gate.batch=4",
                            "loop.iterations=2", "allow_config_change=true"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert [i["iteration"] for i in s["iterations"]] == [0, 1] and s["iterations"][0] == it


@pytest.mark.parametrize("extra, needle", [
    (["loop.labeler=judge"], "loop.labeler=judge needs a judge"),
    (["loop.labeler=reward_model", "loop.gate.oracle=judge"], "loop.gate.oracle=judge needs a judge"),
    (["loop.labeler=reward_model", "loop.gate.oracle=gold"], "has no gold reward"),
    (["loop.labeler=judge", "loop.judge.model=/nonexistent/judge"], "loop.judge.model checkpoint not found"),
    (["loop.labeler=judge", "loop.judge.model=JUDGE", "loop.judge.url=http://127.0.0.1:9"], "not both"),
    (["loop.labeler=judge", "loop.judge.model=JUDGE", "loop.judge.template='Which? {a} {b}'"], "{question}"),
    (["loop.labeler=judge", "loop.judge.url=http://127.0.0.1:9", "loop.judge.timeout_s=2"],
     "judge http://127.0.0.1:9 (loop.judge.url) did not answer"),
    (["loop.labeler=judge", "loop.judge.url=127.0.0.1:8000"], "http:// or https://"),
    (["loop.labeler=judge", "loop.judge.model=NOTEMPLATE"], "has no chat template"),
    (["loop.labeler=reward_model", "loop.gate.alpha=0"], "loop.gate.alpha=0"),
    (["loop.labeler=reward_model", "loop.gate.max_comparisons=4"], "must be >= loop.gate.min_comparisons"),
    (["loop.labeler=reward_model", "loop.judge.tie_margin=0.5"], "loop.judge.tie_margin=0.5"),
])
def test_bad_judge_settings_fail_at_start_naming_the_key(user, tmp_path, extra, needle):
    import shutil

    bare = tmp_path / "no-template"
    if any("NOTEMPLATE" in e for e in extra):
        shutil.copytree(user["judge"], bare)
        (bare / "chat_template.jinja").unlink()
    extra = [e.replace("NOTEMPLATE", str(bare)).replace("JUDGE", user["judge"]) for e in extra]
    p = run_cli(*_loop_args(user, tmp_path / "r", *extra), timeout=120)
    assert p.returncode == 2 and needle in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "r").exists()


def test_anchor_metrics_see_what_a_model_learned_and_forgot(tmp_path):
    """Real forward passes and greedy decoding: a model fine-tuned on three short references reproduces
    them (NLL down, exact match up); the untrained model does not."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ops.evaluation import anchor_metrics

    files = make_user_files(tmp_path)
    path = make_user_model(tmp_path, user_texts(files))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 2 + 2?", "Capital of France?", "Say hi.")]
    refs = ["4", "Paris.", "Hi!"]
    before = anchor_metrics(model, tok, prompts, refs)
    assert before["n_anchors"] == 3 and before["anchor_match"] == 0.0 and before["anchor_nll"] > 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seqs = [tok(p + r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p, r in zip(prompts, refs)]
    for _ in range(60):
        for s in seqs:
            ids = torch.tensor([s])
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = anchor_metrics(model.eval(), tok, prompts, refs)
    assert after["anchor_nll"] < before["anchor_nll"] - 2 and after["anchor_match"] == 1.0, (before, after)


@pytest.mark.parametrize("rows, needle", [
    ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
      {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}]}],
     "bad_anchors.jsonl: row 1: column 'messages' must end with an assistant message"),
    ([{"prompt": "Hi", "reference": "Hello."}], "bad_anchors.jsonl"),
])
def test_a_bad_anchors_file_names_its_file_and_row_before_any_training(user, tmp_path, rows, needle):
    bad = tmp_path / "bad_anchors.jsonl"
    write_jsonl(bad, rows)
    args = [a for a in _loop_args(user, tmp_path / "r", "loop.labeler=reward_model") if not a.startswith("task.anchors")]
    p = run_cli(*args, f"task.anchors={bad}", timeout=120)
    assert p.returncode != 0 and needle in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "r" / "setup" / "sft").exists(), "nothing was trained"


def test_heldout_rm_gate_on_the_testbed_trains_a_second_rm_on_disjoint_seed_pairs(tmp_path):
    from conftest import TINY

    run_dir = tmp_path / "run"
    p = run_cli("+experiment=quickstart", *TINY, "loop.iterations=1", "loop.eval_samples_per_prompt=4",
                "loop.gate.oracle=heldout_rm", "loop.gate.min_comparisons=8", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    setup = run_dir / "setup" / "rm_warmup"
    gate_pairs = pd.read_parquet(setup / "gate_rm_pairs.parquet")
    proxy_pairs = pd.read_parquet(setup / "proxy_rm_pairs.parquet")
    assert len(gate_pairs) == 32 and len(proxy_pairs) == 32  # task.n_offline_pairs=64, rm_share 0.5
    assert not set(gate_pairs["chosen"] + gate_pairs["rejected"]) & set(proxy_pairs["chosen"] + proxy_pairs["rejected"])
    assert (setup / "gate_rm").is_dir()
    it = json.loads((run_dir / "summary.json").read_text())["iterations"][0]
    ev = json.loads((run_dir / "iter_000" / "evaluate" / "eval.json").read_text())
    assert it["h2h_decision"] in ("pass", "lost", "length") and "held-out RM" in " ".join(it["reasons"])
    assert 0 <= ev["gold_win_rate"] <= 1, "the gold head-to-head stays on record beside the gate's"
    assert ev["judge_comparisons"] >= 8 and ev["judge_calls"] == 2 * ev["judge_comparisons"]


def test_heldout_rm_gate_without_seed_pairs_is_refused_at_start(user, tmp_path):
    args = [a for a in _loop_args(user, tmp_path / "r", "loop.labeler=human", "loop.gate.oracle=heldout_rm")
            if not a.startswith("task.pairs")]
    p = run_cli(*args, timeout=120)
    assert p.returncode == 2 and "loop.gate.oracle=heldout_rm" in p.stderr and "task.pairs" in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()


def test_hard_outcomes_count_a_consistent_small_preference_soft_ones_average_it():
    from rlhf_ops.loop.judging import head_to_head

    n = 64
    base = _samples([f"b{i}" for i in range(n)], [10] * n)
    cand = _samples([f"c{i}" for i in range(n)], [10] * n)
    qs = [f"q{i}" for i in range(4)]
    judge = _FixedJudge(lambda a, b: 0.45)  # always, slightly, for the last good policy
    hard = head_to_head(judge, _gate(outcome="hard"), 0.4, cand, base, qs, seed=0)
    soft = head_to_head(judge, _gate(outcome="soft"), 0.4, cand, base, qs, seed=0)
    assert hard["h2h_decision"] == "lost" and hard["win_rate"] == 0.0 and hard["judge_comparisons"] < n
    assert soft["h2h_decision"] == "pass" and soft["win_rate"] == pytest.approx(0.45)
    assert hard["win_rate_soft"] == pytest.approx(0.45)


def test_judge_train_fine_tunes_a_users_model_into_a_judge_the_loop_can_read(tmp_path):
    import sys

    from conftest import REPO

    files = make_user_files(tmp_path, n_prompts=48)
    base = make_user_model(tmp_path, user_texts(files), hidden=64, max_positions=512, name="base")
    before = {p.name: p.read_bytes() for p in Path(base).iterdir()}
    cmd = [sys.executable, "-m", "rlhf_ops.judge_train", "--pairs", files["pairs"], "--init", base, "--max-steps", "150",
           "--learning-rate", "3e-3", "--heldout", "0.2", "--rubric", JUDGE_RUBRIC]
    p = subprocess.run([*cmd, "--out", str(tmp_path / "judge")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((tmp_path / "judge" / "judge_eval.json").read_text())
    assert result["heldout_pairs"] == 19 and result["accuracy"] >= 0.9, result  # measured 1.0
    assert {p.name: p.read_bytes() for p in Path(base).iterdir()} == before, "the init model is never written"
    judge = Judge(LocalJudge(str(tmp_path / "judge")), rubric=JUDGE_RUBRIC)
    assert np.mean([v.p_a > 0.5 for v in judge.compare(_items(10))]) >= 0.9
    p = subprocess.run([*cmd, "--out", str(tmp_path / "judge")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "already exists" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_judge_that_only_picks_a_position_skips_the_head_to_head_out_loud():
    from rlhf_ops.labelers.judge import Comparison, combine
    from rlhf_ops.loop.judging import head_to_head

    class FirstSlot(_FixedJudge):  # SmolLM2-135M on the testbed: P(first) ~ 0.9 whatever the answers
        def compare(self, items):
            self.calls += 2 * len(items)
            return [combine(0.9, 0.9, 0.05) for _ in items]

    n = 32
    base, cand = _samples([f"b{i}" for i in range(n)], [10] * n), _samples([f"c{i}" for i in range(n)], [10] * n)
    out = head_to_head(FirstSlot(None), _gate(outcome="hard"), 0.4, cand, base, [f"q{i}" for i in range(4)], seed=0)
    assert out["h2h_decision"] == "skipped" and "100% of 32 comparisons a tie" in out["h2h_reason"]
    assert "position bias +0.40" in out["h2h_reason"] and out["judge_comparisons"] == n
    assert isinstance(combine(0.9, 0.9, 0.05), Comparison)


def test_adversarial_refresh_fires_on_disagreement_and_repeats_the_pairs_the_rm_got_wrong(tmp_path):
    from conftest import TINY

    run_dir = tmp_path / "run"
    p = run_cli("+experiment=quickstart", *TINY, "loop.iterations=1", "loop.rm_update_every=null",
                "loop.rm_update_disagreement=0.0", "loop.rm_hard_pair_repeat=3", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    it = json.loads((run_dir / "summary.json").read_text())["iterations"][0]
    assert it["rm_update"].startswith("adversarial: the RM ranks"), it["rm_update"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    m = next(r for r in rows if r.get("node") == "rm_update")
    assert 0 < m["rm_fresh_disagreement"] <= 1 and m["rm_hard_pairs"] >= 1 and m["rm_updated"] == 1.0, m
    mix = pd.read_parquet(run_dir / "iter_000" / "rm_update" / "train_mix.parquet")
    assert mix["pair_id"].value_counts().max() == 3, "each pair the old RM got wrong is in the mix three times"
    p = run_cli("+experiment=quickstart", *TINY, "loop.labeler=reward_model", "loop.rm_update_disagreement=0.2",
                f"run_dir={tmp_path / 'r2'}", timeout=120)
    assert p.returncode == 2 and "never disagrees" in p.stderr



def test_plateau_refresh_fires_after_k_iterations_without_a_win(tmp_path):
    """No scheduled refresh, K=1 and a margin no iteration can clear: iteration 0 has no history and no
    refresh, iteration 1 refreshes because iteration 0 did not win by the margin."""
    from conftest import TINY

    run_dir = tmp_path / "run"
    p = run_cli("+experiment=quickstart", *TINY, "loop.iterations=2", "loop.rm_update_every=null",
                "loop.rm_update_plateau=1", "loop.rm_update_plateau_margin=0.49", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    its = json.loads((run_dir / "summary.json").read_text())["iterations"]
    assert not its[0]["rm_update"].startswith("plateau"), its[0]["rm_update"]
    assert its[1]["rm_update"].startswith("plateau: no oracle win rate above 0.99 in the last 1 iterations"), its[1]
    p = run_cli("+experiment=quickstart", *TINY, "loop.rm_update_plateau=0", f"run_dir={tmp_path / 'r2'}", timeout=120)
    assert p.returncode == 2 and "loop.rm_update_plateau" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_rejected_candidates_samples_train_the_next_rm_refresh(tmp_path):
    """A candidate the gate rejects (here: any KL at all is over budget) leaves its evaluation samples,
    labelled by the annotator against the last good policy's, for the next RM refresh."""
    from conftest import TINY

    run_dir = tmp_path / "run"
    p = run_cli("+experiment=quickstart", *TINY, "loop.iterations=2", "loop.eval_samples_per_prompt=2",
                "loop.rm_adversarial_repeat=2", "loop.detectors=[{name:kl_budget,max_kl:0.0000001}]", "stage.ppo.learning_rate=0.003",
                "loop.min_win_rate=null", "loop.max_rollbacks=null", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    its = json.loads((run_dir / "summary.json").read_text())["iterations"]
    assert its[0]["status"] == "rolled_back" and its[0]["adversarial_pairs"] > 0, its[0]
    assert "refresh_rm" in its[0]["remedies"]
    adv = pd.read_parquet(run_dir / "iter_000" / "gate" / "adversarial_pairs.parquet")
    assert (adv["source"] == "adversarial").all() and adv["pair_id"].str.startswith("adv-").all()
    assert adv["policy_checkpoint"].str.endswith("iter_000/policy_update/policy").all()
    mix = pd.read_parquet(run_dir / "iter_001" / "rm_update" / "train_mix.parquet")
    counts = mix[mix["source"] == "adversarial"]["pair_id"].value_counts()
    assert set(counts.index) == set(adv["pair_id"]) and (counts == 2).all()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    m = [r for r in rows if r.get("node") == "rm_update" and r.get("iteration") == 1][-1]
    assert 0 <= m["rm_adversarial_accuracy_before"] <= 1 and 0 <= m["rm_adversarial_accuracy_after"] <= 1
    p = run_cli("+experiment=quickstart", *TINY, "loop.labeler=reward_model", "loop.rm_adversarial_repeat=1",
                f"run_dir={tmp_path / 'r2'}", timeout=120)
    assert p.returncode == 2 and "loop.rm_adversarial_repeat=1" in p.stderr
