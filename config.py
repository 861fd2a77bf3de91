"""Settings shared by every step of the pipeline: paths, the model's shape, training, and presets.

Each setting is a field of a frozen dataclass with its help text beside it: the command-line flags
(--n-layer for GPTConfig.n_layer), their --help and the settings table are generated from these
fields (slm/settings.py). Frozen, so a setting once resolved cannot be changed on its way to the
loop. Nothing heavy is imported and nothing touches the disk here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def setting(default, help: str, valid: str | None = None, zero: str | None = None):
    """A dataclass field with its --help text, and the values it may take: valid is one of ">= 1",
    ">= 0", "> 0", "[0, 1)", "[0, 1]" (slm/settings.py checks them), zero what 0 means."""
    return field(default=default, metadata={"help": help, "valid": valid, "zero": zero})


# ----------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Paths:
    data_dir: str = "data"  # load_dataset.py writes DATA/raw, tokenization.py DATA/*.bin
    out_dir: str = "out"  # training.py writes its checkpoints, logs and plot here
    best_model: str = "out/best_model_params.pt"  # what model_usage.py and evaluate.py load


# GPT-2 BPE facts every step agrees on.
TOKENIZER_NAME = "gpt2"
VOCAB_SIZE = 50257
EOT_ID = 50256  # <|endoftext|>
# One <|endoftext|> goes *before* every story. The model therefore learns "after EOT comes the
# start of a story": generation from an empty prompt starts from EOT, a prompt is encoded as
# [EOT] + prompt, and generation stops when the model emits the next EOT.
EOT_POSITION = "before"

# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = setting(VOCAB_SIZE, "vocabulary size; must match DATA/meta.json's", ">= 1")
    block_size: int = setting(512, "context length in tokens", ">= 1")
    n_layer: int = setting(8, "transformer blocks", ">= 1")
    n_head: int = setting(8, "attention heads per block (must divide --n-embd)", ">= 1")
    n_embd: int = setting(512, "width of the residual stream", ">= 1")
    dropout: float = setting(0.1, "dropout on attention, residual branches, embeddings", "[0, 1)")
    bias: bool = setting(True, "biases in Linear and LayerNorm layers (as in GPT-2)")
    # The default is 51.2M parameters, the tied embedding / LM head matrix counted once.


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    # data and output
    data_dir: str = setting(Paths.data_dir, "directory of train.bin, validation.bin, meta.json")
    out_dir: str = setting(Paths.out_dir, "where checkpoints, log.csv and loss.png go")
    # optimisation
    batch_size: int = setting(32, "sequences per micro-batch, per process", ">= 1")
    grad_accum: int = setting(1, "micro-batches summed per optimizer step, per process", ">= 1")
    max_iters: int = setting(
        20000,
        "optimizer steps in all; the cosine ends here (a time budget fixes it instead)",
        ">= 1",
    )
    learning_rate: float = setting(6e-4, "peak learning rate, reached at the end of warmup", "> 0")
    min_lr: float = setting(6e-5, "learning rate at the end of the cosine (at most the peak)")
    warmup_iters: int = setting(1000, "optimizer steps of linear warmup", ">= 0", "0 = no warmup")
    weight_decay: float = setting(0.1, "AdamW weight decay, on 2+-dimensional tensors only", ">= 0")
    beta1: float = setting(0.9, "AdamW beta1", "[0, 1)")
    beta2: float = setting(0.95, "AdamW beta2", "[0, 1)")
    grad_clip: float = setting(
        1.0, "clip the global gradient norm to this", ">= 0", "0 disables clipping"
    )
    ema: float = setting(
        0.0,
        "decay of a moving average of the weights that evaluations score and "
        "best_model_params.pt keeps (0.99 averages the last ~100 steps; 0 = the weights as "
        "trained)",
        "[0, 1)",
        "0 = no average: the weights as trained",
    )
    quarter_context: float = setting(
        0.0,
        "share of the steps, from the first (and at least the warmup), whose windows are cut in "
        "four: a batch of B x T tokens trains as 4B x T/4 (0 = never)",
        "[0, 1]",
        "a share of the steps; 0 = never",
    )
    short_context: float = setting(
        0.0,
        "share of the steps, from the first (and at least the warmup), whose windows are cut in "
        "half: 2B x T/2, the same tokens with half the context; a short context learns faster "
        "early, the whole one late (0 = never)",
        "[0, 1]",
        "a share of the steps; 0 = never",
    )
    # evaluation
    eval_interval: int = setting(
        500,
        "optimizer steps between evaluations (each saves ckpt.pt); the end evaluates too",
        ">= 1",
    )
    eval_iters: int = setting(50, "fixed batches per split in each evaluation", ">= 1")
    # system
    seed: int = setting(1337, "seed of the initialisation, the batches and dropout")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = setting(
        "auto",
        "auto | float32 | bfloat16 | float16 (auto: bfloat16 where the GPU or CPU has it "
        "natively, float16 on older GPUs, else float32)",
    )
    compile: bool = setting(False, "torch.compile the model")
    full_head: bool = setting(
        False,
        "compute every row of the LM head in the training loss, as before; without it the rows "
        "of tokens train.bin never uses are held equal to one shared row, computed once: the "
        "same full-vocabulary loss, several times faster on a CPU",
    )
    max_minutes: float = setting(
        0.0,
        "train for this many minutes, counted from the start of training (timing and building "
        "the model included): the first warmup steps are timed and the step count that fills the "
        "budget is fixed, printed and saved; a run that falls 2% behind is evaluated, saved and "
        "stopped (0 = no budget: --max-iters steps)",
        ">= 0",
        "0 = no limit",
    )


@dataclass(frozen=True)
class Preset:
    description: str
    model: GPTConfig
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        description="seconds on a CPU: a tiny model, for tests",
        model=GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
        train=TrainConfig(
            batch_size=8,
            max_iters=30,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_iters=5,
            eval_interval=10,
            eval_iters=4,
            device="cpu",
            dtype="float32",
        ),
    ),
    # The recipe search that chose these values, on real TinyStories with every trial's command
    # and loss, is in benchmarks/recipe_search.md and benchmarks/recipe_rule.md.
    "cpu": Preset(
        description="10 minutes of this machine (the step count fills the budget): a small "
        "model that writes readable stories",
        # no dropout: on a CPU, attention dropout moves SDPA off its fused kernel (~45% slower
        # steps), which costs more than it gains in 10 minutes; weight decay 0.5 instead
        # (benchmarks/training.md, "The freed steps")
        model=GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        train=TrainConfig(
            batch_size=16,
            max_iters=1500,  # --max-minutes 0 trains exactly this many steps
            learning_rate=5e-3,  # high, so a long warmup holds it up
            min_lr=2e-3,  # the average of the weights smooths the noise of a high floor
            warmup_iters=300,
            weight_decay=0.5,  # ~4,000 steps on a bf16 CPU, ~10 passes over the offline sample
            beta2=0.99,
            ema=0.99,
            quarter_context=0.25,  # the first quarter of the steps at context 32,
            short_context=0.5,  # then 64 until half-way, then the whole 128
            eval_interval=500,  # few evaluations: the budget goes to training steps
            eval_iters=10,
            dtype="auto",  # bfloat16 on CPUs with native bf16, else float32
            max_minutes=10.0,  # the step count is fixed to fill 10 minutes of this machine
        ),
    ),
    "gpu": Preset(
        description="the 51M default model, 128 x 512 tokens per step; dtype, micro-batch "
        "and compile fitted to the GPU",
        model=GPTConfig(),
        train=TrainConfig(
            batch_size=64,
            grad_accum=2,
            dtype="auto",  # bfloat16 where native (sm80+), float16 + GradScaler on a T4
            compile=True,  # where Triton runs; the plan fits the micro-batch to the GPU's memory
        ),
    ),
}
