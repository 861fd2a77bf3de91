"""A training run's state, in one place: its settings, where it runs, what it trains, and how far it
has got.

Plain state: training.py builds it (build_run), moves it on (train_step, evaluate_and_save) and
saves it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from config import GPTConfig, TrainConfig
from slm.averaging import WeightAverage
from slm.distributed import Dist
from slm.recipe import tokens_per_step
from slm.schedule import Budget


@dataclass
class Run:
    """One training run: its settings, where it runs, what it trains, and how far it has got.

    build_run() makes it (and restore() brings it to a checkpoint's step); train_step() and
    evaluate_and_save() move it on. The loop in train() only calls these."""

    mc: GPTConfig
    tc: TrainConfig
    preset: str | None
    dist: Dist
    say: Callable[[str], None]  # prints on rank 0 only, above the progress bar
    out_dir: Path
    facts: dict  # what the checkpoints record about the data (slm.checkpoint.data_facts)
    batches: Any
    # uncompiled: its state_dict is what gets saved, so no _orig_mod. keys
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer = None
    scheduler: Any = None
    scaler: torch.amp.GradScaler = None
    # the weights' moving average (--ema): what evaluates and is kept
    average: WeightAverage | None = None
    # draws the training batches; evaluation has its own generators
    batch_gen: torch.Generator = None
    model: torch.nn.Module = None  # raw_model, compiled if asked: what evaluates
    train_model: torch.nn.Module = None  # model, wrapped in DDP under torchrun: what trains
    budget: Budget | None = None  # the time budget while it has not fixed max_iters yet
    # what the step budget chose (slm/recipe.py), saved with the schedule
    recipe: dict | None = None
    machine: Any = None  # slm.hardware.Machine: what the report names
    # writes the sample shown at each evaluation (rank 0)
    glimpse: Callable[[torch.nn.Module], str] | None = None
    t_start: float = field(default_factory=time.time)
    # progress: what the checkpoints save and restore
    step: int = 0  # optimizer steps done
    best_val: float = math.inf
    best_step: int = -1
    history: list = field(default_factory=list)  # one row per evaluation, as in log.csv
    # (step, train loss, lr) of every optimizer step, as in steps.csv
    steps: list = field(default_factory=list)
    step_loss: float = math.nan  # training loss of the last step
    # how max_iters was fixed (and by which recipe); None while the budget's probe runs
    schedule: dict | None = None
    # this process only
    lr: float = math.nan  # learning rate the last step used
    eval_s: float = 0.0  # how long the last evaluate_and_save took (0: none yet in this process)
    save_s: float = 0.0  # how much of that was saving files
    t_train: float = 0.0  # when the time budget started counting
    shown: tuple = ()  # (evaluations, steps) that log.csv, steps.csv and loss.png last showed

    device = property(lambda self: self.dist.device)
    dtype = property(lambda self: self.tc.dtype)
    # every process's
    tokens_per_step = property(lambda self: tokens_per_step(self.mc, self.tc) * self.dist.world)

    @property
    def finished(self) -> bool:
        return self.schedule is not None and self.step >= self.tc.max_iters
