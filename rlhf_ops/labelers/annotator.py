"""A simulated annotator from the testbed's default panel labels a random pair per prompt."""

from __future__ import annotations

import pandas as pd

from ..testbed.annotators import default_panel
from ..testbed.builders import pairs_from_candidates


def panel_member(name: str, seed: int):
    panel = {a.name: a for a in default_panel(seed)}
    if name not in panel:
        raise ValueError(f"unknown annotator '{name}' (the default panel has {sorted(panel)})")
    return panel[name]


class AnnotatorLabeler:
    def __init__(self, name: str, seed: int):
        self.name, self.seed = name, seed

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int, checkpoint: str,
              work_dir=None) -> pd.DataFrame:
        # A fresh annotator per iteration, seeded by it, keeps labels reproducible on resume.
        annotator = panel_member(self.name, self.seed * 7919 + iteration)
        return pairs_from_candidates(prompt_rows, candidates, annotator, iteration=iteration,
                                     policy_checkpoint=checkpoint, source="policy", rng_seed=self.seed + iteration)
