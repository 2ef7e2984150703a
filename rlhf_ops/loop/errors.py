"""How a step tells the runner something other than "done"."""

from __future__ import annotations


class RecipeError(ValueError):
    """The recipe in conf/loop/ names an unknown step, or a run dir holds another recipe's progress."""


class StopLoop(Exception):
    """End the loop for now (labels are awaited, too many rollbacks): the step is forgotten and
    runs again on resume."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class AbandonIteration(Exception):
    """This iteration cannot go on (a non-finite reward, a diverged update, no reward model): the
    runner skips the iteration's remaining steps and the gate rolls it back, applying `remedies`."""

    def __init__(self, reason: str, remedies: tuple[str, ...] = ("lower_lr",), metrics: dict | None = None):
        super().__init__(reason)
        self.reason, self.remedies, self.metrics = reason, list(remedies), dict(metrics or {})
