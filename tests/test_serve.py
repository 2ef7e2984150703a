"""rlhf_ops.serve as a user runs it: `python -m rlhf_ops.serve --model DIR --port 0 --port-file F` as a
subprocess over a tiny local model directory (ChatML template, pad == EOS), spoken to with urllib."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from user_data import make_user_files, make_user_model, user_texts

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
PROMPTS = ["Tell me about coffee.", "Hi", "What is the night sky?",
           "Tell me about planting tomatoes in a small garden, please, and take your time."]
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, whatever *_proxy says


def _sharpen(model_dir: str) -> None:
    """Re-draw the tiny model's weights wider, so greedy answers differ from prompt to prompt and the
    top-1 token leads the next by a clear margin (a fresh init is nearly uniform and repeats '\\n')."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(model_dir)


def _start(model: str, d: Path, name: str, *extra: str):
    port_file, log = d / f"{name}.port", d / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlhf_ops.serve", "--model", model, "--port", "0",
                                 "--port-file", str(port_file), *extra],
                                cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    return {"proc": proc, "port_file": port_file, "log": log}


def _wait_url(s: dict, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while not s["port_file"].exists():
        if s["proc"].poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"server did not start (rc={s['proc'].poll()}):\n{s['log'].read_text()}")
        time.sleep(0.05)
    return f"http://127.0.0.1:{int(s['port_file'].read_text())}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    model = make_user_model(d, user_texts(make_user_files(d)))
    _sharpen(model)
    bare = d / "no-template"
    shutil.copytree(model, bare)
    (bare / "chat_template.jinja").unlink()
    # A wide batching window, so the concurrent requests below reliably land in one generate.
    main = _start(model, d, "main", "--max-batch", "4", "--batch-window-ms", "300")
    plain = _start(str(bare), d, "bare")
    try:
        yield {"model": model, "url": _wait_url(main), "bare_url": _wait_url(plain), "main": main}
    finally:
        for s in (main, plain):
            if s["proc"].poll() is None:
                s["proc"].send_signal(signal.SIGTERM)
        for s in (main, plain):
            try:
                s["proc"].wait(30)
            except subprocess.TimeoutExpired:
                s["proc"].kill()


def _call(url: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with _HTTP.open(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _chat(url: str, prompt: str, **kw) -> dict:
    status, out = _call(url, "/v1/chat/completions",
                        {"model": "my-model", "messages": [{"role": "user", "content": prompt}], **kw})
    assert status == 200, out
    return out


def test_health_and_models(served):
    assert _call(served["url"], "/health") == (200, {"status": "ok"})
    status, out = _call(served["url"], "/v1/models")
    assert status == 200 and out["object"] == "list"
    assert [(m["id"], m["object"]) for m in out["data"]] == [("my-model", "model")]


def test_greedy_logprobs_match_the_model(served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _chat(served["url"], PROMPTS[0], temperature=0, max_tokens=3, logprobs=True, top_logprobs=5)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    assert isinstance(out["created"], int) and out["model"] == "my-model"
    (choice,) = out["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"} and choice["index"] == 0
    assert choice["message"]["role"] == "assistant"

    # The same prompt, templated the same way, scored directly: log_softmax of the raw logits.
    tok = AutoTokenizer.from_pretrained(served["model"])
    model = AutoModelForCausalLM.from_pretrained(served["model"]).eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                   add_generation_prompt=True)
    seq = tok(text, add_special_tokens=False)["input_ids"]
    n_prompt, steps = len(seq), []
    for _ in range(3):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].float(), -1)
        steps.append((int(lp.argmax()), lp))
        if steps[-1][0] == tok.eos_token_id:
            break
        seq.append(steps[-1][0])
    ids = [t for t, _ in steps if t != tok.eos_token_id]
    assert choice["finish_reason"] == ("stop" if len(ids) < len(steps) else "length")
    assert choice["message"]["content"] == tok.decode(ids, skip_special_tokens=True)
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": len(steps),
                            "total_tokens": n_prompt + len(steps)}

    entries = choice["logprobs"]["content"]
    assert len(entries) == len(ids) > 0
    for e, (t, lp) in zip(entries, steps):
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["token"] == tok.decode([t])
        assert e["logprob"] == pytest.approx(lp[t].item(), abs=1e-4)
        top = e["top_logprobs"]
        assert len(top) == 5 and all(set(x) == {"token", "logprob", "bytes"} for x in top)
        values = [x["logprob"] for x in top]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(lp.topk(5).values.tolist(), abs=1e-4)
        assert top[0]["token"] == e["token"] and top[0]["logprob"] == pytest.approx(e["logprob"], abs=1e-6)
    # Each token's bytes (a byte-level token may hold part of a character) add up to the content.
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace") == choice["message"]["content"]


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
    kw = dict(temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    alone = [_chat(served["url"], p, **kw) for p in PROMPTS]
    together: list = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def ask(i):
        start.wait()
        together[i] = _chat(served["url"], PROMPTS[i], **kw)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len({a["choices"][0]["message"]["content"] for a in alone}) > 1  # the prompts do differ
    for a, b in zip(alone, together):
        ca, cb = a["choices"][0], b["choices"][0]
        assert (ca["message"], ca["finish_reason"], a["usage"]) == (cb["message"], cb["finish_reason"], b["usage"])
        la, lb = ca["logprobs"]["content"], cb["logprobs"]["content"]
        assert [e["token"] for e in la] == [e["token"] for e in lb]
        assert [e["logprob"] for e in la] == pytest.approx([e["logprob"] for e in lb], abs=1e-4)
    sizes = [int(n) for n in re.findall(r"batch of (\d+) request", served["main"]["log"].read_text())]
    assert max(sizes) > 1, sizes  # left-padded prompts of different lengths went through one generate


def test_bad_requests_answer_errors_and_the_server_goes_on(served):
    url = served["url"]
    for raw in (b"{not json", b"", b"[1, 2]", b"\xff\xfe"):
        status, out = _call(url, "/v1/chat/completions", raw=raw)
        assert status == 400 and out["error"]["message"] and out["error"]["type"] == "invalid_request_error", raw
    status, out = _call(url, "/v1/chat/completions", {"model": "my-model"})
    assert status == 400 and "messages" in out["error"]["message"]
    status, out = _call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2})
    assert status == 400 and out["error"]["param"] == "n"
    status, out = _call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                       "top_logprobs": 21, "logprobs": True})
    assert status == 400 and out["error"]["param"] == "top_logprobs"
    status, out = _call(url, "/v1/nowhere", {"messages": []})
    assert status == 404 and out["error"]["message"]
    assert _call(url, "/health") == (200, {"status": "ok"})


def test_model_without_chat_template_is_refused(served):
    status, out = _call(served["bare_url"], "/v1/chat/completions",
                        {"model": "no-template", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "chat template" in out["error"]["message"]
    assert out["error"]["type"] == "invalid_request_error"


def test_sigterm_shuts_down_cleanly(served):
    main = served["main"]
    main["proc"].send_signal(signal.SIGTERM)
    assert main["proc"].wait(30) == 0, main["log"].read_text()
    assert not main["port_file"].exists()
