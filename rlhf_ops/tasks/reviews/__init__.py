"""The review testbed as a task (`task=reviews`): synthetic review prompts, grammar demonstrations,
grammar pairs labelled by a simulated annotator, an exact gold reward and an annotator panel.

Nothing outside this package imports it; the loop reaches it through `conf/task/reviews.yaml`'s
`_target_` and the `rlhf_ops.tasks.Task` protocol.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

from rlhf_ops.tasks import GoldFn, TaskData


class AnnotatorLabeler:
    """A simulated annotator from the default panel labels a random pair per prompt."""

    def __init__(self, name: str, seed: int):
        self.name, self.seed = name, seed

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int, checkpoint: str,
              work_dir=None) -> pd.DataFrame:
        from .builders import pairs_from_candidates

        # A fresh annotator per iteration, seeded by it, keeps labels reproducible on resume.
        annotator = panel_member(self.name, self.seed * 7919 + iteration)
        return pairs_from_candidates(prompt_rows, candidates, annotator, iteration=iteration,
                                     policy_checkpoint=checkpoint, source="policy", rng_seed=self.seed + iteration)


def panel_member(name: str, seed: int):
    from .annotators import default_panel

    panel = {a.name: a for a in default_panel(seed)}
    if name not in panel:
        raise ValueError(f"unknown annotator '{name}' (the default panel has {sorted(panel)})")
    return panel[name]


ANNOTATORS = ("careful", "typical", "noisy", "length_biased")


class ReviewsTask:
    """The testbed. Sizes and the offline annotator are the keys of conf/task/reviews.yaml."""

    def __init__(self, name: str = "reviews", seed: int = 0, n_train_prompts: int = 600, n_eval_prompts: int = 64,
                 n_gold_eval_prompts: int = 64, sft_demos_per_prompt: int = 6, sft_min_gold: Optional[float] = None,
                 n_offline_pairs: int = 600, annotator: str = "careful", tokenizer_corpus_size: int = 3000,
                 n_anchors: int = 32):
        self.name, self.seed = name, seed
        self.n_train, self.n_eval, self.n_gold_eval = n_train_prompts, n_eval_prompts, n_gold_eval_prompts
        self.sft_demos_per_prompt, self.sft_min_gold = sft_demos_per_prompt, sft_min_gold
        self.n_offline_pairs, self.offline_annotator = n_offline_pairs, annotator
        self.tokenizer_corpus_size, self.n_anchors = tokenizer_corpus_size, n_anchors

    def check(self) -> None:
        from .task import all_prompt_rows

        if self.offline_annotator not in ANNOTATORS:
            raise ValueError(f"task.annotator: '{self.offline_annotator}' is not one of {ANNOTATORS}")
        for key, n in (("n_train_prompts", self.n_train), ("n_gold_eval_prompts", self.n_gold_eval)):
            if n < 1:
                raise ValueError(f"task.{key}={n} must be >= 1")
        if self.n_anchors < 0:
            raise ValueError(f"task.n_anchors={self.n_anchors} must be >= 0 (0 = no capability anchors)")
        total = self.n_train + self.n_eval + self.n_gold_eval
        if total > len(all_prompt_rows()):
            raise ValueError(f"task: {total} prompts asked for (n_train_prompts + n_eval_prompts + "
                             f"n_gold_eval_prompts) but the testbed has {len(all_prompt_rows())}")

    def load(self, seed: int) -> TaskData:
        from .builders import build_grammar_pairs, build_prompt_pool, build_sft_demos
        from .task import prompt_splits, tokenizer_corpus

        s = self.seed  # the testbed's data follow task.seed, not the run's seed
        splits = prompt_splits(s, self.n_train, self.n_eval, self.n_gold_eval)
        annotator = panel_member(self.offline_annotator, s)
        demos = build_sft_demos(splits["train"], self.sft_demos_per_prompt, s, self.sft_min_gold)
        pairs = build_grammar_pairs(splits["train"], self.n_offline_pairs, annotator, s)
        heldout = build_grammar_pairs(splits["eval"], max(64, self.n_eval), annotator, s + 1) if splits["eval"] else None
        # Capability anchors: well-formed reviews (the grammar's, gold >= 0.5) for held-out prompts, which no
        # stage trains on; a policy that stops being able to write them has forgotten what SFT taught it.
        anchors = build_sft_demos(splits["eval"][:self.n_anchors], 1, s + 2, 0.5) if self.n_anchors else None
        return TaskData(train_prompts=build_prompt_pool(splits["train"]),
                        eval_prompts=build_prompt_pool(splits["gold_eval"]),
                        sft=demos if len(demos) else None, pairs=pairs if len(pairs) else None,
                        heldout_pairs=heldout, anchors=anchors if anchors is not None and len(anchors) else None,
                        corpus=tokenizer_corpus(s, self.tokenizer_corpus_size),
                        sources={"prompts": "the review testbed"})

    @property
    def gold(self) -> Optional[GoldFn]:
        from .gold import gold_reward

        return gold_reward

    def annotators(self) -> tuple[str, ...]:
        return ANNOTATORS

    def annotator(self, name: str, seed: int) -> AnnotatorLabeler:
        if name not in ANNOTATORS:
            raise ValueError(f"unknown annotator '{name}' (the default panel has {list(ANNOTATORS)})")
        return AnnotatorLabeler(name, seed)
