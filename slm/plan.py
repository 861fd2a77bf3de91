"""The per-machine plan: what the hardware chooses for a run, said in one line.

The preset (and the recipe rule, slm/recipe.py) say WHAT to compute: the model, the schedule and
the sequences per optimizer step. The plan says HOW this machine computes it:

- dtype (where the preset or --dtype says auto): bfloat16 where it is native (CUDA capability
  8.0+, CPUs with AVX512_BF16/AMX/Arm BF16); float16 with torch.amp.GradScaler on older CUDA GPUs
  (a T4); float32 on other CPUs and on Apple GPUs (MPS).
- micro-batch and gradient accumulation: on a GPU the largest micro-batch whose estimated memory
  fits (activation_bytes below, checked against measured peaks), with accumulation keeping the
  preset's sequences per optimizer step, so the schedule and the results stay the same on every
  GPU.
- compile: where the preset asks for it and it can run here (Triton on CUDA, a C++ compiler on a
  CPU).

A flag given by hand (--dtype, --batch-size, --grad-accum, --compile/--no-compile) is never
overridden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from config import GPTConfig, TrainConfig
from slm.cli import out_of_memory
from slm.hardware import Machine, auto_dtype, autocast, fork_rng, synchronize

# Bytes of activations per token, fitted to the 51M default model's peak memory on an H100 at
# 64 x 512 tokens in bf16, eager and compiled (benchmarks/model.md, "On a GPU"). The
# (tokens, vocab) logits dominate: eager torch keeps the 16-bit logits, their float32 copy,
# log-softmax and gradients (~15 bytes per logit); compiled, inductor fuses the loss (~8.5). Each
# block keeps ~17 values per token and channel (Korthikanti et al. 2022, with flash attention), in
# the activation dtype.
LOGIT_BYTES = {False: 15.0, True: 8.5}  # by compiled
BLOCK_VALUES = 17
TRAINING_BYTES_PER_PARAM = 16  # float32 weights, gradients and AdamW's two moments
AVERAGE_BYTES_PER_PARAM = 4  # the weights' float32 average (--ema, slm/averaging.py)
# of the device's memory (free memory where known); the rest is the allocator's slack
USABLE_MEMORY = 0.85
RESERVED_BYTES = 512 << 20  # CUDA context, cuBLAS workspaces


@dataclass(frozen=True)
class Plan:
    """How this machine runs the run: the four values it may choose, and why (for the one-line
    summary).
    """

    dtype: str
    batch_size: int  # sequences per micro-batch, per process
    grad_accum: int
    compile: bool
    # what was chosen by hand or could not be done
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def grad_scaler(self) -> bool:
        return self.dtype == "float16"

    def line(self, machine: Machine) -> str:
        scaler = " with GradScaler" if self.grad_scaler else ""
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"plan for {machine.describe()}: {self.dtype}{scaler}, micro-batch {self.batch_size} "
            f"x {self.grad_accum} accumulation, compile {'on' if self.compile else 'off'}{notes}"
        )

    def apply(self, tc: TrainConfig) -> TrainConfig:
        from dataclasses import replace

        return replace(
            tc,
            dtype=self.dtype,
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            compile=self.compile,
        )


def activation_bytes(mc: GPTConfig, dtype: str, compiled: bool) -> float:
    """Estimated bytes of activations one sequence of mc.block_size tokens holds for its backward
    pass.
    """
    width = 4 if dtype == "float32" else 2
    per_token = (
        mc.vocab_size * LOGIT_BYTES[compiled] + mc.n_layer * mc.n_embd * BLOCK_VALUES * width
    )
    return per_token * mc.block_size


def training_memory(
    mc: GPTConfig, batch_size: int, dtype: str, compiled: bool, averaged: bool = False
) -> float:
    """Estimated peak bytes of a training step with this micro-batch: the parameters' state (and
    their average, with --ema) plus activations."""
    # parameters: the tied embedding, positions, and per block 12 C^2 + 13 C (model.py's layers)
    c = mc.n_embd
    params = (mc.vocab_size + mc.block_size) * c + mc.n_layer * (12 * c * c + 13 * c) + 2 * c
    per_param = TRAINING_BYTES_PER_PARAM + (AVERAGE_BYTES_PER_PARAM if averaged else 0)
    return params * per_param + batch_size * activation_bytes(mc, dtype, compiled)


def fitting_micro_batch(
    machine: Machine,
    mc: GPTConfig,
    sequences: int,
    dtype: str,
    compiled: bool,
    averaged: bool = False,
) -> int:
    """The largest divisor of `sequences` whose training step fits the device's memory (1 at
    least)."""
    memory = machine.free_memory or machine.total_memory
    usable = memory * USABLE_MEMORY - RESERVED_BYTES
    fits = [
        d
        for d in range(1, sequences + 1)
        if sequences % d == 0 and training_memory(mc, d, dtype, compiled, averaged) <= usable
    ]
    return max(fits, default=1)


def resolve_dtype(machine: Machine, tc: TrainConfig) -> str:
    """The dtype a run of tc on machine trains in: --dtype as given, or auto_dtype's choice for
    'auto'.
    """
    return auto_dtype(machine) if tc.dtype == "auto" else tc.dtype


def make_plan(
    machine: Machine, mc: GPTConfig, tc: TrainConfig, given: set[str] | frozenset[str] = frozenset()
) -> Plan:
    """The plan for running (mc, tc) on machine; `given` names the TrainConfig fields set by
    hand."""
    notes = []
    dtype = resolve_dtype(machine, tc)
    compile_ = tc.compile and not machine.compile_problem  # training says why in its own line
    batch_size, grad_accum = tc.batch_size, tc.grad_accum
    sequences = batch_size * grad_accum
    if machine.total_memory and not {"batch_size", "grad_accum"} & set(given):
        batch_size = fitting_micro_batch(
            machine, mc, sequences, dtype, compile_, averaged=tc.ema > 0
        )
        grad_accum = sequences // batch_size
        if (
            training_memory(mc, batch_size, dtype, compile_, tc.ema > 0)
            > machine.total_memory * USABLE_MEMORY
        ):
            notes.append("even one sequence may not fit: lower --block-size or use a smaller model")
    elif {"batch_size", "grad_accum"} & set(given):
        notes.append("micro-batch as given")
    return Plan(
        dtype=dtype,
        batch_size=batch_size,
        grad_accum=grad_accum,
        compile=compile_,
        notes=tuple(notes),
    )


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA, MPS or CPU allocation failure (slm/cli.out_of_memory, which also makes it one line
    under run_cli).
    """
    return out_of_memory(e) is not None


def shrink_until_it_fits(plan: Plan, trial_pass: Callable[[int], None], say, given) -> Plan:
    """Run trial_pass(micro_batch) (a forward and backward, no optimizer step); while it runs out of
    memory, halve the micro-batch to the next divisor of the sequences per step and accumulate
    more, so the tokens per optimizer step stay the same. The memory estimate leaves a margin;
    this is the measurement behind it. A micro-batch given by hand is tried as it is: its OOM is
    the user's to see."""
    from dataclasses import replace

    sequences = plan.batch_size * plan.grad_accum
    while True:
        try:
            trial_pass(plan.batch_size)
            return plan
        except Exception as e:
            if (
                not is_out_of_memory(e)
                or plan.batch_size == 1
                or {"batch_size", "grad_accum"} & set(given)
            ):
                raise
        smaller = max(
            d for d in range(1, plan.batch_size) if sequences % d == 0 and d <= plan.batch_size // 2
        )
        say(
            f"note: a micro-batch of {plan.batch_size} ran out of memory in a trial step; using "
            f"{smaller} x {sequences // smaller} accumulation (the same {sequences} sequences per "
            "optimizer step)"
        )
        plan = replace(plan, batch_size=smaller, grad_accum=sequences // smaller)


class TrialPass:
    """Forward and backward passes of a model that change nothing a run keeps: no optimizer step,
    the gradients dropped, the batch from a generator of its own, and dropout's draws inside
    fork_rng (the global CPU, CUDA and MPS generators come back as they were). The time budget
    times them to price a step, and on a GPU they prove that a micro-batch fits."""

    def __init__(self, model, batches, device: str, **loss_kwargs):
        self.model, self.batches, self.device, self.loss_kwargs = (
            model,
            batches,
            device,
            loss_kwargs,
        )

    def __call__(self, batch_size: int, dtype: str, parts: int = 1) -> None:
        import torch

        from slm.schedule import cut_windows

        x, y = self.batches.get_batch(
            "train", batch_size, generator=torch.Generator().manual_seed(0)
        )
        x, y = cut_windows(x, y, parts)
        with fork_rng(self.device):
            with autocast(self.device, dtype):
                _, loss = self.model(x, y, **self.loss_kwargs)
            loss.backward()
        self.model.zero_grad(set_to_none=True)
        synchronize(self.device)  # the budget times this pass: on a GPU its work, not its queueing
