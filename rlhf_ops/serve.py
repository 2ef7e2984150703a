"""An OpenAI-compatible chat-completions server over a local Hugging Face causal-LM directory.

    python -m rlhf_ops.serve --model DIR [--host 127.0.0.1] [--port 0] [--max-batch 8] [--port-file PATH]

It lets the LLM-judge HTTP client be tested against a real server on a CPU machine, and serves a
judge model on another machine. Standard library HTTP (ThreadingHTTPServer) plus torch/transformers.

  GET  /health               {"status": "ok"}
  GET  /v1/models            {"object": "list", "data": [{"id": MODEL_ID, "object": "model", ...}]}
  POST /v1/chat/completions  model (any value), messages, max_tokens (16, at most 512), temperature
                             (1.0; 0 = greedy), top_p, seed, logprobs, top_logprobs (0..20), n (1 only)

MODEL_ID is the model directory's name. Messages are rendered with the tokenizer's chat template
(add_generation_prompt=True). Log-probs are log_softmax of the raw logits (temperature 1, before any
sampling warper) at each generated position; the EOS that ends a completion is counted in
usage.completion_tokens but is neither in the content nor in logprobs.content. The model's own
generation_config (top_k, repetition penalties, ...) is not applied: only the request's settings are.

Requests arriving together are batched: one worker thread takes up to --max-batch queued requests with
the same (max_tokens, temperature, top_p, logprobs) and runs one left-padded generate. A request with
a seed runs alone, after torch.manual_seed(seed), so its sample does not depend on other traffic.
With --port 0 a free port is picked; --port-file gets the port (written atomically) once the model is
loaded and the socket listens, and is removed on shutdown (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("rlhf_ops.serve")

MAX_TOKENS_CAP = 512
MAX_TOP_LOGPROBS = 20
MAX_BODY = 16 << 20


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class Params:
    messages: list[dict]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def batch_key(self) -> tuple:
        sample = self.temperature > 0
        return (self.max_tokens, self.temperature, self.top_p if sample else 1.0, self.logprobs)


def _number(body: dict, key: str, default, lo: float, hi: float | None, *, integer=False, lo_open=False):
    v = body.get(key)
    if v is None:
        return default
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not ((lo < v) if lo_open else (lo <= v)) or (hi is not None and v > hi):
        kind = "an integer" if integer else "a number"
        where = f">= {lo}" if hi is None else f"in {'(' if lo_open else '['}{lo}, {hi}]"
        raise RequestError(400, f"'{key}' must be {kind} {where}, got {v!r}", key)
    return v


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None or isinstance(c, str):
        return c or ""
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                   for p in c):
        return "".join(p["text"] for p in c)
    raise RequestError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")


def parse_request(body) -> Params:
    """The request's settings, or RequestError(400) naming the field that is wrong."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' is required: a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(400, f"messages[{i}] must be an object with a string 'role'", "messages")
        messages.append({"role": m["role"], "content": _content(m, i)})
    if body.get("n") not in (None, 1):
        raise RequestError(400, f"only n=1 is supported, got n={body.get('n')!r}", "n")
    for key, default in (("stream", False), ("stop", None), ("tools", None), ("logit_bias", None),
                         ("frequency_penalty", 0), ("presence_penalty", 0)):
        if body.get(key) not in (None, default, [], {}, ""):
            raise RequestError(400, f"'{key}' is not supported by this server", key)
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, max_key, 16, 1, None, integer=True)
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(400, f"'logprobs' must be a boolean, got {logprobs!r}", "logprobs")
    top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
    if body.get("top_logprobs") is not None and not logprobs:
        raise RequestError(400, "'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    return Params(messages, min(max_tokens, MAX_TOKENS_CAP), float(_number(body, "temperature", 1.0, 0, 2)),
                  float(_number(body, "top_p", 1.0, 0, 1, lo_open=True)), seed, bool(logprobs), top)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE token uses -> its byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTES = _byte_decoder()
_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Engine:
    """The tokenizer and model; `prepare` runs on request threads, `generate` on the worker only."""

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from .checkpoints import ENSEMBLE_FILE, check_checkpoint_dir

        path = check_checkpoint_dir(model_dir, "model", tokenizer=True)
        if (path / ENSEMBLE_FILE).is_file():
            raise ValueError(f"{path} is a reward-model ensemble, not a causal LM")
        self.torch, self.model_id = torch, path.resolve().name
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "auto" if self.device.startswith("cuda") else "float32"
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype if dtype == "auto" else getattr(torch, dtype), use_safetensors=True,
            trust_remote_code=trust_remote_code).to(self.device).eval()
        gc = self.model.generation_config
        eos = [e for e in (gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id])
               if e is not None]
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in eos:
            eos.append(self.tok.eos_token_id)
        if not eos:
            raise ValueError(f"{path}: neither the tokenizer nor generation_config.json names an EOS token")
        self.eos = set(eos)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos[0]
        # Only the request's settings shape sampling: the checkpoint's generation defaults are dropped.
        self.model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=self.pad_id,
                                                        bos_token_id=gc.bos_token_id)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()  # a Rust tokenizer may not be used by two threads at once
        self._token_cache: dict[int, tuple[str, list[int]]] = {}

    def prepare(self, p: Params) -> list[int]:
        if not getattr(self.tok, "chat_template", None):
            raise RequestError(400, f"the tokenizer of model '{self.model_id}' has no chat template (no chat_template "
                                    "in tokenizer_config.json, nor chat_template.jinja), so messages cannot be rendered;"
                                    " add a chat template to the model directory", "messages")
        with self._lock:
            try:
                text = self.tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001  (jinja's TemplateError, raise_exception in a template, ...)
                raise RequestError(400, f"the chat template failed on these messages: {e}", "messages") from None
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.max_positions and len(ids) + p.max_tokens > self.max_positions:
            raise RequestError(400, f"this model's maximum context length is {self.max_positions} tokens, but "
                                    f"{len(ids)} prompt tokens + max_tokens {p.max_tokens} were requested",
                               "messages", "context_length_exceeded")
        return ids

    def token(self, tid: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one token id, as OpenAI reports them (bytes may be a partial character)."""
        if tid not in self._token_cache:
            piece = self.tok.convert_ids_to_tokens(tid) or ""
            text = self.tok.decode([tid])
            raw = None
            if tid not in self.tok.all_special_ids and piece and all(ch in _BYTES for ch in piece):
                raw = bytes(_BYTES[ch] for ch in piece)  # byte-level BPE
                raw = raw if raw.decode("utf-8", "replace") == text else None
            if raw is None and (m := _HEX_BYTE.fullmatch(piece)):
                raw = bytes([int(m.group(1), 16)])  # SentencePiece byte fallback
            if raw is None and "\u2581" in piece:
                raw = piece.replace("\u2581", " ").encode()  # SentencePiece word start (decode drops it)
            raw = text.encode() if raw is None else raw
            self._token_cache[tid] = (raw.decode("utf-8", "replace"), list(raw))
        return self._token_cache[tid]

    def generate(self, params: list[Params], prompts: list[list[int]]) -> list[dict]:
        """One left-padded generate for requests with the same batch_key; a choice + usage per request."""
        torch, p = self.torch, params[0]
        width = max(map(len, prompts))
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=self.device)
        sample = p.temperature > 0
        kw = dict(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0) if sample else dict(do_sample=False)
        from transformers import GenerationConfig

        cfg = GenerationConfig(max_new_tokens=p.max_tokens, num_beams=1, eos_token_id=sorted(self.eos),
                               pad_token_id=self.pad_id, return_dict_in_generate=True, output_logits=p.logprobs, **kw)
        if p.seed is not None:
            torch.manual_seed(p.seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=cfg)
            new = out.sequences[:, width:].tolist()
            logps = torch.log_softmax(torch.stack(out.logits, 1).float(), -1) if p.logprobs else None
        results = []
        for i, (req, toks) in enumerate(zip(params, new)):
            n = next((k for k, t in enumerate(toks) if t in self.eos), None)
            finish, content_ids = ("length", toks) if n is None else ("stop", toks[:n])
            with self._lock:
                text = self.tok.decode(content_ids, skip_special_tokens=True)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            if p.logprobs:
                choice["logprobs"] = {"content": self._logprobs(logps[i, :len(content_ids)], content_ids,
                                                                req.top_logprobs)}
            completion = len(content_ids) + (finish == "stop")
            results.append({"choice": choice, "usage": {"prompt_tokens": len(prompts[i]),
                                                        "completion_tokens": completion,
                                                        "total_tokens": len(prompts[i]) + completion}})
        return results

    def _logprobs(self, rows, ids: list[int], k: int) -> list[dict]:
        if not ids:
            return []
        torch = self.torch
        chosen = rows.gather(-1, torch.tensor(ids, device=rows.device)[:, None])[:, 0].tolist()
        tops = rows.topk(k, -1) if k else None
        entries = []
        with self._lock:
            for pos, (tid, lp) in enumerate(zip(ids, chosen)):
                text, raw = self.token(tid)
                top = []
                if tops is not None:
                    for v, t in zip(tops.values[pos].tolist(), tops.indices[pos].tolist()):
                        t_text, t_raw = self.token(t)
                        top.append({"token": t_text, "logprob": v, "bytes": t_raw})
                entries.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": top})
        return entries


@dataclass(eq=False)
class Job:
    params: Params
    prompt: list[int]
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: Exception | None = None


class Batcher:
    """One worker thread running `engine.generate` on batches of queued jobs with the same settings."""

    def __init__(self, engine: Engine, max_batch: int, window_s: float):
        self.engine, self.max_batch, self.window_s = engine, max(1, max_batch), window_s
        self._cv = threading.Condition()
        self._queue: list[Job] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> dict:
        with self._cv:
            if self._closed:
                raise RequestError(503, "the server is shutting down", code="server_shutting_down")
            self._queue.append(job)
            self._cv.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            first = self._queue[0]
            if first.params.seed is not None:  # a seeded sample must not depend on what it was batched with
                return [self._queue.pop(0)]
            same = lambda: [j for j in self._queue if j.params.seed is None and j.params.batch_key == first.params.batch_key]
            deadline = time.monotonic() + self.window_s
            while len(same()) < self.max_batch and not self._closed and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            batch = same()[:self.max_batch]
            self._queue = [j for j in self._queue if j not in batch]
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            t0 = time.monotonic()
            try:
                results = self.engine.generate([j.params for j in batch], [j.prompt for j in batch])
                for j, r in zip(batch, results):
                    j.result = r
            except Exception as e:  # noqa: BLE001  (one failed batch answers 500, the server goes on)
                log.exception("generate failed for a batch of %d", len(batch))
                for j in batch:
                    j.error = RequestError(500, f"generation failed: {type(e).__name__}: {e}", code="server_error")
            for j in batch:
                j.done.set()
            log.info("batch of %d request(s), max_tokens=%d, %.0f ms", len(batch), batch[0].params.max_tokens,
                     1000 * (time.monotonic() - t0))

    def close(self, timeout: float) -> None:
        """Refuse new jobs, answer queued ones 503, and let the running batch finish."""
        with self._cv:
            self._closed = True
            for j in self._queue:
                j.error = RequestError(503, "the server is shutting down", code="server_shutting_down")
                j.done.set()
            self._queue = []
            self._cv.notify_all()
        self._thread.join(timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rlhf_ops-serve/0.1"
    timeout = 300  # an idle keep-alive connection is closed after this long
    server: "Server"

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        with self.server.busy:
            self.server.active += 1
        try:
            self._route(method)
        finally:
            with self.server.busy:
                self.server.active -= 1
                self.server.busy.notify_all()

    def _route(self, method: str) -> None:
        try:
            body = self._read_body()
            path = urlsplit(self.path).path.rstrip("/") or "/"
            routes = {("GET", "/health"): lambda: {"status": "ok"}, ("GET", "/v1/models"): self._models,
                      ("POST", "/v1/chat/completions"): lambda: self._chat(body)}
            if (method, path) in routes:
                self._send(200, routes[(method, path)]())
            elif any(p == path for _, p in routes):
                raise RequestError(405, f"method {method} is not allowed on {path}")
            else:
                raise RequestError(404, f"unknown path: {method} {path}", code="unknown_url")
        except RequestError as e:
            kind = "invalid_request_error" if e.status < 500 else "server_error"
            self._send(e.status, error_body(e.message, kind, e.param, e.code))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001  (a bug answers 500; the server keeps serving)
            log.exception("error handling %s %s", method, self.path)
            self._send(500, error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise RequestError(411, "send the body with a Content-Length header")
            return b""
        if not length.strip().isdigit():
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length: {length!r}")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise RequestError(413, f"request body over {MAX_BODY} bytes")
        return self.rfile.read(int(length))

    def _models(self) -> dict:
        return {"object": "list", "data": [{"id": self.server.engine.model_id, "object": "model",
                                            "created": self.server.started, "owned_by": "rlhf_ops"}]}

    def _chat(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON: {e}") from None
        params = parse_request(body)
        engine = self.server.engine
        out = self.server.batcher.submit(Job(params, engine.prepare(params)))
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": engine.model_id, "choices": [out["choice"]], "usage": out["usage"]}

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        log.info("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, engine: Engine, batcher: Batcher):
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        self.engine, self.batcher, self.started = engine, batcher, int(time.time())
        self.busy, self.active = threading.Condition(), 0  # requests inside a handler
        super().__init__(address, Handler)

    def drain(self, timeout: float) -> None:
        """Wait until no handler is still answering a request."""
        with self.busy:
            self.busy.wait_for(lambda: self.active == 0, timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_ops.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a local causal-LM directory (save_pretrained)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--max-batch", type=int, default=8, help="most requests in one generate")
    ap.add_argument("--batch-window-ms", type=float, default=5.0,
                    help="how long the first queued request waits for others to batch with")
    ap.add_argument("--port-file", help="write the port here (atomically) once listening")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="auto: float32 on CPU, the checkpoint's dtype on GPU")
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(asctime)s][%(name)s] %(message)s")

    from .artifacts import InputError, write_text_atomic

    try:
        engine = Engine(args.model, args.device, args.dtype, args.trust_remote_code)
    except (InputError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    batcher = Batcher(engine, args.max_batch, args.batch_window_ms / 1000)
    server = Server((args.host, args.port), engine, batcher)
    port = server.server_address[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {engine.model_id} on http://{host}:{port}", flush=True)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    port_file = Path(args.port_file) if args.port_file else None
    if port_file:
        write_text_atomic(port_file, f"{port}\n")
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # a second signal ends it at once
        log.info("shutting down (signal %s)", stop[0] if stop else "-")
        server.shutdown()  # no new connections; requests already in handlers go on
        batcher.close(timeout=60)
        server.drain(timeout=10)  # handlers that just got their result write it
        server.server_close()
        if port_file:
            port_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
