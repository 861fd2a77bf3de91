"""How far a training run has got: what ckpt.pt saves and --resume restores, besides the weights,
the optimizer and the schedule. training.py moves it on; slm/checkpoint.py and slm/report.py read
it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    best_val: float = math.inf  # the best validation loss so far: best_model_params.pt's
    best_step: int = -1
    history: list[dict] = field(default_factory=list)  # one row per evaluation, as in log.csv
    steps: list[tuple] = field(default_factory=list)  # (step, loss, lr) per step, as in steps.csv
    step_loss: float = math.nan  # the training loss of the last step
    # how max_iters was fixed (and by which recipe); None while a time budget's probe runs
    schedule: dict | None = None
    # (evaluations, steps) that log.csv, steps.csv and loss.png last showed (this process only)
    shown: tuple = ()

    def finished(self, max_iters: int) -> bool:
        return self.schedule is not None and self.step >= max_iters
