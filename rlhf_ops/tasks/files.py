"""`task=files`: the user's own prompts, demonstrations and preference pairs, from local files.

    python -m rlhf_ops +experiment=online_ppo task=files task.prompts=data/prompts.jsonl \
        task.sft=data/sft.jsonl task.pairs=data/pairs.jsonl model=local model.path=/models/my-sft

Each file is a .jsonl, a .parquet or a `datasets.save_to_disk` folder, in TRL's standard or
conversational format (rlhf_ops.formats). Without `task.eval_prompts` a frozen, seeded share of
the prompts is held out for evaluation and never trained on. Without `task.sft` the model is taken
as already fine-tuned; without `task.pairs` there is no reward-model warm-up, so the first
iteration's labels (human queue) train the first reward model. A user's task has no gold reward
and no simulated annotators.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Optional

from rlhf_ops.artifacts import InputError
from rlhf_ops.formats import normalize_pairs, normalize_prompts, normalize_sft, read_any, source_key
from rlhf_ops.tasks import TaskData

log = logging.getLogger(__name__)


class FilesTask:
    def __init__(self, name: str = "files", prompts: str = "", sft: Optional[str] = None, pairs: Optional[str] = None,
                 eval_prompts: Optional[str] = None, eval_fraction: float = 0.1, max_eval_prompts: int = 64,
                 heldout_pair_fraction: float = 0.1, seed: int = 0, anchors: Optional[str] = None):
        self.name, self.seed = name, seed
        self.paths = {"prompts": prompts, "sft": sft, "pairs": pairs, "eval_prompts": eval_prompts, "anchors": anchors}
        self.eval_fraction, self.max_eval_prompts = eval_fraction, max_eval_prompts
        self.heldout_pair_fraction = heldout_pair_fraction

    def check(self) -> None:
        if not self.paths["prompts"]:
            raise InputError("task.prompts: task=files needs a prompts file (task.prompts=FILE: .jsonl, .parquet "
                             "or a datasets folder, with a 'prompt' column)")
        for key, path in self.paths.items():
            if path and not Path(path).exists():
                raise InputError(f"task.{key}: no such file or folder: {path}")
        if not 0 < self.eval_fraction < 1 and not self.paths["eval_prompts"]:
            raise InputError(f"task.eval_fraction={self.eval_fraction} must be in (0, 1)")
        if not 0 <= self.heldout_pair_fraction < 1:
            raise InputError(f"task.heldout_pair_fraction={self.heldout_pair_fraction} must be in [0, 1)")
        if self.max_eval_prompts < 1:
            raise InputError(f"task.max_eval_prompts={self.max_eval_prompts} must be >= 1")

    def _read(self, key: str, normalize):
        path = self.paths[key]
        return normalize(read_any(path, f"task.{key}"), path) if path else None

    def load(self, seed: int) -> TaskData:
        self.check()
        prompts = self._read("prompts", normalize_prompts)
        eval_prompts = self._read("eval_prompts", normalize_prompts)
        rng = random.Random(self.seed)
        if eval_prompts is None:
            # A frozen split by task.seed (not the run's seed): every run on these files evaluates the same prompts.
            # Split by distinct prompt, so the copies of a duplicated prompt all land on one side (evaluating on
            # a prompt the policy trained on would flatter it); with no duplicates this is a split of the rows.
            n_eval = min(self.max_eval_prompts, max(1, round(len(prompts) * self.eval_fraction)))
            keys = [source_key(p) for p in prompts["prompt"]]
            rows: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                rows.setdefault(key, []).append(i)
            groups = list(rows.values())
            if len(prompts) - n_eval < 1 or len(groups) < 2:
                raise InputError(f"{self.paths['prompts']}: {len(prompts)} prompt(s), {len(groups)} distinct, cannot be "
                                 "split into training and evaluation prompts; give at least 2 different prompts, or "
                                 "task.eval_prompts=FILE")
            order = list(range(len(groups)))
            rng.shuffle(order)
            taken: list[int] = []
            for g in order[:-1]:  # at least one distinct prompt stays for training
                if len(taken) >= n_eval:
                    break
                taken += groups[g]
            held = set(taken)
            eval_prompts = prompts.iloc[sorted(held)].reset_index(drop=True)
            prompts = prompts.iloc[[i for i in range(len(keys)) if i not in held]].reset_index(drop=True)
        else:
            train_keys = {source_key(p) for p in prompts["prompt"]}
            shared = [i for i, p in enumerate(eval_prompts["prompt"]) if source_key(p) in train_keys]
            if shared:  # counted once, not per row
                log.warning("%s: %d of %d evaluation prompt(s) are also training prompts (first: row %d); the "
                            "evaluation scores prompts the policy trained on", self.paths["eval_prompts"], len(shared),
                            len(eval_prompts), shared[0])
        sft = self._read("sft", normalize_sft)
        pairs = self._read("pairs", normalize_pairs)
        heldout = None
        if pairs is not None and self.heldout_pair_fraction > 0 and len(pairs) >= 10:
            order = list(range(len(pairs)))
            rng.shuffle(order)
            n = max(2, round(len(pairs) * self.heldout_pair_fraction))
            heldout = pairs.iloc[sorted(order[:n])].reset_index(drop=True)
            pairs = pairs.iloc[sorted(order[n:])].reset_index(drop=True)
        if pairs is not None:
            pairs = pairs.assign(prompt_id=[f"pair{i:06d}" for i in range(len(pairs))])
        corpus = [source_key(p) for p in prompts["prompt"]]
        for df, cols in ((sft, ("completion",)), (pairs, ("chosen", "rejected"))):
            if df is not None:
                corpus += [source_key(p) + df[c].iloc[i] for i, p in enumerate(df["prompt"]) for c in cols]
        anchors = self._read("anchors", normalize_sft)
        return TaskData(train_prompts=prompts, eval_prompts=eval_prompts, sft=sft, pairs=pairs,
                        heldout_pairs=heldout, corpus=corpus, anchors=anchors,
                        sources={k: str(v) for k, v in self.paths.items() if v})

    @property
    def gold(self):
        return None

    def annotators(self) -> tuple[str, ...]:
        return ()

    def annotator(self, name: str, seed: int):
        raise ValueError("task=files has no simulated annotators; use loop.labeler=reward_model or human")
