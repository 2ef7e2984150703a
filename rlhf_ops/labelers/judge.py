"""A pairwise LLM judge: which of two answers to a question is better, as a probability.

The judge is shown the question and two answers under a rubric and asked for one letter, A or B. Its
preference is read from the next-token probabilities of the two letters (no sampling, no parsing of
free text): p = P(A) / (P(A) + P(B)), the letter's variants (" A", "A") summed. Every comparison is
asked in both orders, so a judge that favours the first position cancels out:

    p(a > b) = (p_ab + 1 - p_ba) / 2      p_ab: P("A") with a first,  p_ba: P("A") with b first

and it is a tie when the two orders disagree by more than `tie_margin` (the judge picks a position,
not an answer) or when p(a > b) is within `tie_margin` of 0.5 - and the position bias is counted.

Two backends, one interface (`first_wins(list of chat messages) -> list of P(first answer wins)`):

- `LocalJudge`: a local Hugging Face causal-LM directory with a chat template, batched left-padded
  forward passes (no generate); what CI and a single-GPU user run.
- `HTTPJudge`: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, rlhf_ops.serve,
  OpenAI itself): max_tokens 1, temperature 0, logprobs with top_logprobs; a concurrency limit,
  timeouts, retries with backoff on connection errors, 429 and 5xx; a start-up probe that fails
  naming the address before any model is trained.

Verdicts are cached in the run directory (SQLite, keyed by judge, rubric and the exact texts), so a
resumed or repeated comparison never costs a second call, and `calls` counts what was really asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..artifacts import InputError
from ..pairs import PAIR_COLUMNS, make_pair_id

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = ("You are a careful, impartial judge of answers to a user's request. Prefer the answer that is "
                  "more helpful, correct and relevant, and clearly written. Do not prefer an answer because it is "
                  "longer, or because of its position. Reply with a single letter: A or B.")
DEFAULT_TEMPLATE = ("[Request]\n{question}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
                    "Which answer is better? Reply with A or B.")
LABELS = ("A", "B")


class JudgeError(RuntimeError):
    """The judge could not answer (server down, malformed reply): the step stops, naming the judge."""


def question_text(source: str) -> str:
    """What the judge is shown as the request: a text prompt as is; a conversation (the JSON that
    `formats.source_key` keeps) as its turns, a single user turn as its content."""
    try:
        msgs = json.loads(source) if source.lstrip().startswith("[") else None
    except json.JSONDecodeError:
        msgs = None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "content" in m for m in msgs):
        return source
    if len(msgs) == 1 and msgs[0].get("role") == "user":
        return str(msgs[0]["content"])
    return "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in msgs)


def judge_messages(rubric: str, template: str, question: str, first: str, second: str) -> list[dict]:
    user = template.replace("{question}", question).replace("{a}", first).replace("{b}", second)
    return ([{"role": "system", "content": rubric}] if rubric else []) + [{"role": "user", "content": user}]


def check_template(template: str, key: str = "loop.judge.template") -> None:
    missing = [p for p in ("{question}", "{a}", "{b}") if p not in template]
    if missing:
        raise InputError(f"{key}: the judge's prompt template must contain {missing} (it has {template[:60]!r}...)")


@dataclass
class Comparison:
    p_a: float      # P(a better than b), both orders averaged
    p_ab: float     # P(first wins) with a first
    p_ba: float     # P(first wins) with b first
    tie: bool

    @property
    def outcome(self) -> float:
        """1 a wins, 0 b wins, 0.5 tie."""
        return 0.5 if self.tie else float(self.p_a > 0.5)

    @property
    def position_bias(self) -> float:
        """How much more the judge likes the first slot: (p_ab + p_ba)/2 - 0.5 (0 = none)."""
        return (self.p_ab + self.p_ba) / 2 - 0.5


def combine(p_ab: float, p_ba: float, tie_margin: float) -> Comparison:
    p_a = (p_ab + 1.0 - p_ba) / 2
    inconsistent = abs(p_ab - (1.0 - p_ba)) > 2 * tie_margin and (p_ab > 0.5) == (p_ba > 0.5)
    return Comparison(p_a, p_ab, p_ba, tie=inconsistent or abs(p_a - 0.5) <= tie_margin)


class VerdictCache:
    """P(first wins) per (judge, rubric, template, question, first, second), in one SQLite file."""

    def __init__(self, path: Path | None):
        self.path, self._lock = path, threading.Lock()
        self._mem: dict[str, float] = {}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.execute("CREATE TABLE IF NOT EXISTS verdict (key TEXT PRIMARY KEY, p_first REAL NOT NULL, "
                           "judge TEXT NOT NULL, at REAL NOT NULL)")

    def _db(self):
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @staticmethod
    def key(*parts: str) -> str:
        h = hashlib.sha256()
        for p in parts:
            h.update(p.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, float]:
        found = {k: self._mem[k] for k in keys if k in self._mem}
        rest = [k for k in keys if k not in found]
        if rest and self.path is not None:
            with self._lock, self._db() as db:
                for i in range(0, len(rest), 500):
                    chunk = rest[i:i + 500]
                    q = f"SELECT key, p_first FROM verdict WHERE key IN ({','.join('?' * len(chunk))})"
                    found.update(dict(db.execute(q, chunk).fetchall()))
        return found

    def put_many(self, items: dict[str, float], judge: str) -> None:
        self._mem.update(items)
        if self.path is not None and items:
            now = time.time()
            with self._lock, self._db() as db:
                db.executemany("INSERT OR REPLACE INTO verdict VALUES (?, ?, ?, ?)",
                               [(k, v, judge, now) for k, v in items.items()])


class Judge:
    """Compares answers through a backend, both orders, cached; counts calls and position bias."""

    def __init__(self, backend, *, rubric: str = DEFAULT_RUBRIC, template: str = DEFAULT_TEMPLATE,
                 tie_margin: float = 0.05, cache: VerdictCache | None = None):
        check_template(template)
        self.backend, self.rubric, self.template, self.tie_margin = backend, rubric, template, tie_margin
        self.cache = cache or VerdictCache(None)
        self.calls = 0       # judge prompts really sent to the backend (two per fresh comparison)
        self.cached = 0      # judge prompts answered from the cache

    @property
    def id(self) -> str:
        return self.backend.id

    def compare(self, items: list[tuple[str, str, str]]) -> list[Comparison]:
        """items: (question, a, b). One Comparison per item."""
        prompts, keys = [], []
        for q, a, b in items:
            for first, second in ((a, b), (b, a)):
                prompts.append(judge_messages(self.rubric, self.template, q, first, second))
                keys.append(VerdictCache.key(self.id, self.rubric, self.template, q, first, second))
        known = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in known]
        self.cached += len(keys) - len(todo)
        if todo:
            got = self.backend.first_wins([prompts[i] for i in todo])
            self.calls += len(todo)
            fresh = {keys[i]: float(p) for i, p in zip(todo, got)}
            self.cache.put_many(fresh, self.id)
            known.update(fresh)
        return [combine(known[keys[2 * j]], known[keys[2 * j + 1]], self.tie_margin) for j in range(len(items))]


def _letter_ids(tokenizer, letter: str) -> list[int]:
    ids = set()
    for variant in (letter, " " + letter):
        enc = tokenizer.encode(variant, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    return sorted(ids)


def check_local_judge(model_dir: str, trust_remote_code: bool = False, key: str = "loop.judge.model"):
    """(tokenizer, letter token ids) of a local judge directory, or an InputError naming `key`: no
    model is loaded, so the start-up check can call it."""
    from ..formats import has_chat_template
    from ..models import check_checkpoint_dir, load_tokenizer

    check_checkpoint_dir(model_dir, key, tokenizer=True)
    tok = load_tokenizer(model_dir, trust_remote_code)
    if not has_chat_template(tok):
        raise InputError(f"{key}={model_dir}: the judge's tokenizer has no chat template; a judge is asked in chat "
                         "turns (add a chat_template to tokenizer_config.json, or use an instruction-tuned model)")
    ids = {letter: _letter_ids(tok, letter) for letter in LABELS}
    if not all(ids.values()):
        raise InputError(f"{key}={model_dir}: the tokenizer has no single token for the letters A and B; "
                         "it cannot be used as a judge here")
    return tok, ids


class LocalJudge:
    """A local causal LM as the judge: P(A) vs P(B) as the next token after the chat template's
    generation prompt, in batches."""

    def __init__(self, model_dir: str, *, batch_size: int = 8, trust_remote_code: bool = False, key: str = "loop.judge.model"):
        from ..models import load_policy

        self.tok, self.ids = check_local_judge(model_dir, trust_remote_code, key)
        self.tok.padding_side = self.tok.truncation_side = "left"
        self.model = load_policy(model_dir, trust_remote_code).eval()
        self.batch_size = batch_size
        # A judge prompt longer than the judge's context loses its beginning (the rubric, then the request),
        # never the answers' end and the question it must answer; counted, and warned about once.
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.truncated = 0
        self.id = f"local:{Path(model_dir).resolve()}"

    def render(self, messages: list[dict]) -> str:
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates that refuse a system turn: fold it into the user turn
            if messages and messages[0]["role"] == "system":
                merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
                return self.tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            raise

    def first_wins(self, prompts: list[list[dict]]) -> list[float]:
        import torch

        texts = [self.render(m) for m in prompts]
        out: list[float] = []
        a_ids, b_ids = torch.tensor(self.ids["A"]), torch.tensor(self.ids["B"])
        device = next(self.model.parameters()).device
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            if self.max_len:
                long = sum(len(ids) > self.max_len for ids in self.tok(chunk, add_special_tokens=False)["input_ids"])
                if long and not self.truncated:
                    log.warning("judge %s: a judge prompt is longer than its context (%d tokens); its beginning is "
                                "cut (counted in judge_truncated)", self.id, self.max_len)
                self.truncated += long
            enc = self.tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                           truncation=self.max_len is not None, max_length=self.max_len)
            with torch.no_grad():
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits[:, -1, :].float()
            lp = torch.log_softmax(logits, -1).cpu()
            la, lb = torch.logsumexp(lp[:, a_ids], -1), torch.logsumexp(lp[:, b_ids], -1)
            p = torch.sigmoid(la - lb)
            if not torch.isfinite(p).all():
                raise JudgeError(f"judge {self.id} gave a non-finite preference")
            out.extend(p.tolist())
        return out


class HTTPJudge:
    """An OpenAI-compatible chat-completions server as the judge."""

    def __init__(self, url: str, *, model: str = "", timeout_s: float = 60.0, retries: int = 3,
                 concurrency: int = 4, api_key_env: str = "", backoff_s: float = 0.5, key: str = "loop.judge.url"):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"{key}={url!r}: expected an http:// or https:// address of a chat-completions server")
        self.base = url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.model, self.timeout, self.retries, self.key = model, timeout_s, retries, key
        self.concurrency, self.backoff = max(1, concurrency), backoff_s
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self.api_key:
            raise InputError(f"loop.judge.api_key_env={api_key_env}: that environment variable is not set")
        self.id = f"http:{self.base}:{model}"
        self.requests = 0          # HTTP requests sent, retries included
        self.prompt_tokens = self.completion_tokens = 0
        self.unparsed = 0          # answers with neither letter among the top log-probs (counted as 0.5)
        self._lock = threading.Lock()
        # The proxy variables of the environment are honoured (a judge may live behind one), except for loopback.
        self._open = (urllib.request.build_opener(urllib.request.ProxyHandler({}))
                      if self.base.split("//", 1)[1].startswith(("127.0.0.1", "localhost", "[::1]"))
                      else urllib.request.build_opener())

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            with self._lock:
                self.requests += 1
            req = urllib.request.Request(self.base + "/v1/chat/completions", data=data, headers=headers)
            try:
                with self._open.open(req, timeout=self.timeout) as r:
                    raw = r.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise JudgeError(f"judge {self.base} ({self.key}) answered with something that is not JSON "
                                     f"({e.msg}): {raw[:80]!r}") from e
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                if e.code not in (408, 429) and e.code < 500:
                    raise JudgeError(f"judge {self.base} ({self.key}) refused the request: HTTP {e.code} {detail}") from e
                last = f"HTTP {e.code} {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e)) or type(e).__name__
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise JudgeError(f"judge {self.base} ({self.key}) did not answer after {self.retries + 1} attempt(s): {last}")

    def _one(self, messages: list[dict]) -> float:
        body = {"model": self.model or "judge", "messages": messages, "max_tokens": 1, "temperature": 0,
                "logprobs": True, "top_logprobs": 20}
        out = self._post(body)
        try:
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            with self._lock:
                self.prompt_tokens += int(usage.get("prompt_tokens", 0))
                self.completion_tokens += int(usage.get("completion_tokens", 0))
            content = (choice.get("logprobs") or {}).get("content") or []
            tops = content[0].get("top_logprobs") or [] if content else []
            mass = {letter: 0.0 for letter in LABELS}
            for t in tops:
                s = str(t["token"]).strip()
                if s in mass:
                    mass[s] += math.exp(float(t["logprob"]))
            text = str((choice.get("message") or {}).get("content") or "").strip()
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise JudgeError(f"judge {self.base} ({self.key}) answered in an unexpected shape ({type(e).__name__}: "
                             f"{e}); expected OpenAI chat-completions JSON with logprobs") from e
        total = mass["A"] + mass["B"]
        if total > 0:
            return mass["A"] / total
        if text[:1] in LABELS:  # a server without logprobs: the greedy letter itself
            return 1.0 if text[0] == "A" else 0.0
        with self._lock:
            self.unparsed += 1
        return 0.5

    def first_wins(self, prompts: list[list[dict]]) -> list[float]:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [self._one(m) for m in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts))

    def probe(self) -> None:
        """One real judge request before any model is trained: a server that is down, slow, refuses or
        answers in another format stops the run here, naming its address."""
        saved = self.retries
        self.retries = min(saved, 1)
        try:
            self._one(judge_messages("", DEFAULT_TEMPLATE, "Say hello.", "Hello!", "Goodbye."))
        except JudgeError as e:
            raise InputError(f"{e} (the start-up probe; check that the server runs and {self.key} is right)") from e
        finally:
            self.retries = saved


def make_judge(jc, *, run_dir: Path | None, trust_remote_code: bool = False, probe: bool = True) -> Judge:
    """The judge a `loop.judge` config describes; its verdict cache lives in the run directory."""
    if jc.url:
        backend = HTTPJudge(jc.url, model=jc.model_name, timeout_s=jc.timeout_s, retries=jc.retries,
                            concurrency=jc.concurrency, api_key_env=jc.api_key_env)
        if probe:
            backend.probe()
    elif jc.model:
        backend = LocalJudge(jc.model, batch_size=jc.batch_size, trust_remote_code=trust_remote_code)
    else:
        raise InputError("loop.judge: set loop.judge.model (a local model directory) or loop.judge.url "
                         "(an OpenAI-compatible server)")
    cache = VerdictCache(Path(run_dir) / "judge" / "verdicts.sqlite") if run_dir is not None else None
    return Judge(backend, rubric=jc.rubric, template=jc.template, tie_margin=jc.tie_margin, cache=cache)


class JudgeLabeler:
    """Preference pairs from the judge: with two candidates one comparison per prompt (a tie gives no
    pair); with more, every pair is compared and the Copeland winner (most wins, then the highest mean
    preference) is chosen against the Copeland loser."""

    def __init__(self, judge: Judge, questions: dict[str, str]):
        self.judge, self.questions = judge, questions  # rendered prompt -> the request the judge sees

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int, checkpoint: str,
              work_dir=None) -> pd.DataFrame:
        items, where = [], []
        for j, (row, cs) in enumerate(zip(prompt_rows, candidates)):
            distinct = list(dict.fromkeys(cs))
            q = self.questions.get(row["prompt"], row["prompt"])
            for x in range(len(distinct)):
                for y in range(x + 1, len(distinct)):
                    items.append((q, distinct[x], distinct[y]))
                    where.append((j, x, y))
        verdicts = self.judge.compare(items)
        per: dict[int, dict] = {}
        for (j, x, y), v in zip(where, verdicts):
            d = per.setdefault(j, {})
            for me, other, p in ((x, y, v.p_a), (y, x, 1 - v.p_a)):
                wins, pref = d.get(me, (0.0, 0.0))
                d[me] = (wins + (0.5 if v.tie else float(p > 0.5)), pref + p)
        records = []
        for j, scores in per.items():
            distinct = list(dict.fromkeys(candidates[j]))
            order = sorted(scores, key=lambda i: scores[i])
            best, worst = order[-1], order[0]
            if scores[best][0] == scores[worst][0]:
                continue  # the judge prefers neither (a tie, or a cycle among three or more)
            row = prompt_rows[j]
            chosen, rejected = distinct[best], distinct[worst]
            records.append({
                "pair_id": make_pair_id("judge", iteration, checkpoint, row["prompt_id"], j, chosen, rejected),
                "prompt": row["prompt"], "prompt_id": row["prompt_id"], "chosen": chosen, "rejected": rejected,
                "gold_chosen": float("nan"), "gold_rejected": float("nan"),
                "labeler": f"judge:{self.judge.id}", "iteration": iteration, "policy_checkpoint": checkpoint,
                "source": "policy"})
        return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
