"""The one checkpoint format, and what a checkpoint says about its training data.

One format for both files training writes:
  best_model_params.pt  {"model", "config", "data", "step", "val_loss"}
  ckpt.pt               the same keys plus {"optimizer", "scheduler", "scaler", "rng",
                        "train_config", "best_val_loss", "average", "head_rows", ...}:
                        everything training needs to resume. "head_rows": the LM head rows the
                        training loss computes (the token ids train.bin uses; None: every row).
With --ema, best_model_params.pt's "model" is the weights' average and ckpt.pt's the trained
weights, the average beside them.
"config" is dataclasses.asdict(GPTConfig) and "data" the tokenizer/source facts of meta.json,
both plain dicts, so torch.load(path, weights_only=True) reads every file. The model itself is
rebuilt from a checkpoint by model.GPT.from_checkpoint; check_vocab refuses one whose token ids
mean other text.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import zipfile
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from config import EOT_ID, EOT_POSITION, TOKENIZER_NAME, GPTConfig, TrainConfig
from slm.cli import CLIError, first_line
from slm.files import (
    atomic_torch_save,
    check_free_space,
    human_bytes,
    saved_bytes,
    space_to_replace,
)
from slm.run import Progress

if TYPE_CHECKING:
    import torch


def checkpoint_sizes(model, averaged: bool = False) -> tuple[int, int]:
    """About how many bytes training's two files take for this model: best_model_params.pt holds the
    weights; ckpt.pt also AdamW's two moments (exp_avg, exp_avg_sq) per trainable parameter,
    their average where there is one (--ema), the schedule, RNG states and the loss history (well
    under a megabyte)."""
    weights = saved_bytes(model.state_dict())
    moments = (3 if averaged else 2) * sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )
    return weights, weights + moments + 1024 * len(list(model.parameters())) + (256 << 10)


def check_checkpoint_space(
    out_dir: str | os.PathLike, model, best_file: str, ckpt_file: str, averaged: bool = False
) -> None:
    """Refuse to start training (one line) when out_dir's disk cannot take both checkpoint files."""
    weights, resume_state = checkpoint_sizes(model, averaged)
    needed = space_to_replace(out_dir, {best_file: weights, ckpt_file: resume_state})
    check_free_space(
        out_dir,
        needed,
        f"{best_file} and {ckpt_file} ({human_bytes(weights)} and {human_bytes(resume_state)})",
    )


def config_to_dict(config: GPTConfig) -> dict:
    return asdict(config)


def config_from_dict(d: dict) -> GPTConfig:
    known = {f.name for f in fields(GPTConfig)}
    unknown = set(d) - known
    if unknown:
        raise CLIError(
            f"checkpoint has unknown model settings {sorted(unknown)}; was it made by another tool?"
        )
    return GPTConfig(**d)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint dict safely (weights_only), with one clear error for each way it can be
    bad. mmap: map the tensors from the file instead of reading them, for a caller that needs
    only the settings or shapes."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CLIError(f"no checkpoint at {path}; train one first with: python training.py")
    if path.is_dir():
        raise CLIError(
            f"{path} is a directory; pass the checkpoint file (e.g. "
            f"{path / 'best_model_params.pt'})"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, pickles of arbitrary objects, ...
        raise CLIError(f"{path} {why_unreadable(path, e)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CLIError(
            f"{path} is not a checkpoint made by training.py (no 'model' and 'config' entries)"
        )
    return ckpt


def why_unreadable(path: Path, e: Exception) -> str:
    """Why torch.load(path, weights_only=True) failed, in words a user can act on. torch's own
    messages run to several lines, and for a file of other Python objects they suggest
    weights_only=False, which would run whatever code the file holds: a checkpoint from
    training.py never needs that."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:  # no read permission, an I/O error
        return f"cannot be read: {err.strerror or first_line(err)}"
    if not head:
        return "is empty (0 bytes): a save that was cut short, or not a checkpoint"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "is not a checkpoint: torch.save writes a zip archive, and this file is not one"
    if not zipfile.is_zipfile(path):
        return (
            "is truncated: its zip archive has no end (a save that was cut short, or an incomplete "
            "copy)"
        )
    if isinstance(e, pickle.UnpicklingError):  # weights_only refuses all but tensors and plain data
        return (
            "holds Python objects other than tensors and plain values, which are not loaded (they "
            "could run code): it was not made by training.py"
        )
    return f"is not a readable checkpoint (damaged, or not made by training.py): {first_line(e)}"


def check_vocab(ckpt: dict, enc, path) -> None:
    """Refuse a checkpoint whose vocabulary is not the tokenizer's: its token ids would mean other
    text.
    """
    data = ckpt.get("data") or {}
    tokenizer = data.get("tokenizer", TOKENIZER_NAME)
    model_vocab = ckpt["config"].get("vocab_size")
    if (
        tokenizer != TOKENIZER_NAME
        or model_vocab != enc.n_vocab
        or data.get("vocab_size", enc.n_vocab) != enc.n_vocab
    ):
        raise CLIError(
            f"{path} was trained with tokenizer {tokenizer!r} and a vocabulary of {model_vocab} "
            f"tokens, but this project's tokenizer is {TOKENIZER_NAME!r} with {enc.n_vocab}; "
            "retrain with: python training.py"
        )
    eot = data.get("eot_id", EOT_ID)
    if eot != EOT_ID or data.get("eot_position", EOT_POSITION) != EOT_POSITION:
        raise CLIError(
            f"{path} puts end-of-text token {eot} {data.get('eot_position')!r} each story, but "
            f"this project uses {EOT_ID} {EOT_POSITION!r}; retrain with: python training.py"
        )


# ----------------------------------------------------------------------------- where a checkpoint's
# data came from


def describe_source(ckpt: dict) -> str:
    """What the checkpoint was trained on, in a few words; a demo corpus (older checkpoints) is said
    loudly."""
    # load_dataset.py's raw/source.json, copied into meta.json and the checkpoint
    source = (ckpt.get("data") or {}).get("source") or {}
    kind = source.get("source")
    if kind is None:
        return "training data unknown (the checkpoint does not record it)"
    # checkpoints from before the bundled sample, trained on generated stories
    if source.get("demo"):
        return "trained on a DEMO CORPUS (generated stories, not TinyStories)"
    if kind == "sample":
        why = "; the hub could not be reached" if source.get("fallback_reason") else ""
        n = ((source.get("splits") or {}).get("train") or {}).get("stories")
        size = f", {n:,} train stories" if isinstance(n, int) else ""
        return (
            "trained on the TinyStories sample bundled in sample_data/tinystories "
            f"(real stories{size}{why})"
        )
    if kind == "hub":
        dataset = source.get("dataset", "roneneldan/TinyStories")
        return f"trained on TinyStories from the Hugging Face hub ({dataset})"
    if kind == "local":
        files = ", ".join(
            f"{split}={path}" for split, path in (source.get("data_files") or {}).items()
        )
        return f"trained on local files ({files})"
    return f"trained on source {kind!r}"


# ----------------------------------------------------------------------------- training's files

# the model at its best validation loss (what model_usage.py loads)
BEST_FILE = "best_model_params.pt"
CKPT_FILE = "ckpt.pt"  # everything --resume needs
# Settings that may differ when resuming: where and how the run executes, not what it computes.
RESUME_MAY_CHANGE = {"data_dir", "out_dir", "device", "dtype", "compile", "max_minutes"}


def data_facts(meta: dict) -> dict:
    """What a checkpoint records about its data: the tokenizer facts and the source (from
    meta.json).
    """
    facts = {k: meta.get(k) for k in ("tokenizer", "vocab_size", "eot_id", "eot_position")}
    facts["source"] = meta.get("source") or {}
    facts["splits"] = {
        s: {"tokens": v.get("tokens"), "sha256": v.get("sha256")} for s, v in meta["splits"].items()
    }
    return facts


def model_file(model, mc: GPTConfig, facts: dict, step: int, val_loss: float) -> dict:
    """best_model_params.pt: the weights and what they are (model config, data, step, validation
    loss)."""
    return {
        "model": model.state_dict(),
        "config": config_to_dict(mc),
        "data": facts,
        "step": step,
        "val_loss": val_loss,
    }


def save_resume_state(
    path: Path,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    average,
    batch_gen,
    mc: GPTConfig,
    tc: TrainConfig,
    progress: Progress,
    facts: dict,
    preset: str | None,
    head_rows=None,
) -> None:
    """ckpt.pt: the model file plus everything --resume needs to continue exactly, the per-step
    losses and learning rates (steps.csv) included, as one float64 tensor of (step, loss, lr)
    rows, and the LM head rows the training loss computes (head_rows; None: all of them)."""
    import torch

    last_val = progress.history[-1]["val_loss"] if progress.history else math.nan
    state = model_file(model, mc, facts, progress.step, last_val)
    state.update(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        rng=rng_state(batch_gen),
        train_config=asdict(tc),
        best_val_loss=progress.best_val,
        best_step=progress.best_step,
        history=progress.history,
        steps=torch.tensor(progress.steps, dtype=torch.float64).reshape(-1, 3),
        step_loss=progress.step_loss,
        schedule=progress.schedule,
        preset=preset,
        average=average.state_dict() if average is not None else None,
        head_rows=None if head_rows is None else head_rows.cpu(),
    )
    atomic_torch_save(state, path)


def head_rows(ckpt: dict | None, full_head: bool, data_dir, meta: dict):
    """The LM head rows a run's training loss computes (model.GPT.forward's rows), a LongTensor,
    or None for all of them. A fresh run: train.bin's tokens, unless full_head. A resumed run:
    the checkpoint's, None where it trained every row (--full-head, or written before
    head_rows): its other rows are not zero."""
    import torch

    from slm.datafiles import used_ids

    if ckpt is not None:
        return ckpt.get("head_rows")
    return None if full_head else torch.from_numpy(used_ids(data_dir, meta))


def read_resume_checkpoint(out_dir: Path, tc: TrainConfig, facts: dict) -> dict:
    """OUT/ckpt.pt, checked: it holds a training state and was trained on the same data."""
    ckpt = load_checkpoint(out_dir / CKPT_FILE, map_location="cpu")
    if "optimizer" not in ckpt:
        raise CLIError(f"{out_dir / CKPT_FILE} has no optimizer state; it cannot be resumed")
    for split, v in facts["splits"].items():
        was = ckpt["data"]["splits"][split]["sha256"]
        if v["sha256"] != was:
            raise CLIError(
                f"the {split} data in {tc.data_dir} changed since {out_dir / CKPT_FILE} was "
                f"written (sha256 {v['sha256'][:12]} != {was[:12]}); resume on the same data or "
                "start afresh"
            )
    return ckpt


def settings_for_resume(
    out_dir: str, model_over: dict, train_over: dict
) -> tuple[GPTConfig, TrainConfig]:
    """The settings stored in OUT/ckpt.pt; flags may only change how the run executes, not what it
    computes.
    """
    ckpt = load_checkpoint(Path(out_dir) / CKPT_FILE)
    if "train_config" not in ckpt:
        raise CLIError(f"{Path(out_dir) / CKPT_FILE} has no training state; it cannot be resumed")
    mc = config_from_dict(ckpt["config"])
    unknown = set(ckpt["train_config"]) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise CLIError(
            f"{Path(out_dir) / CKPT_FILE} has training settings this version does not know "
            f"({', '.join(sorted(unknown))}); resume it with the version that wrote it"
        )
    tc = TrainConfig(**ckpt["train_config"])
    same_sequences = (
        train_over.get("batch_size", tc.batch_size) * train_over.get("grad_accum", tc.grad_accum)
        == tc.batch_size * tc.grad_accum
    )  # the micro-batch may change with the machine; the sequences per step not
    for name, value in {**model_over, **train_over}.items():
        was = getattr(mc, name) if name in model_over else getattr(tc, name)
        if name in ("batch_size", "grad_accum") and same_sequences:
            continue
        if name not in RESUME_MAY_CHANGE and value != was:
            flag = "--" + name.replace("_", "-")
            raise CLIError(
                f"{flag} {value} differs from the {was} that {Path(out_dir) / CKPT_FILE} was "
                "trained with; --resume continues with the checkpoint's settings (start afresh "
                "in another --out-dir to change them)"
            )
    may_change = RESUME_MAY_CHANGE | ({"batch_size", "grad_accum"} if same_sequences else set())
    return mc, replace(tc, **{k: v for k, v in train_over.items() if k in may_change})


# ----------------------------------------------------------------------------- RNG state


def rng_state(batch_gen: torch.Generator) -> dict:
    """Every random state training draws from, as plain lists and tensors (torch.load weights_only
    reads it).
    """
    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _tuple_to_list(random.getstate()),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "batches": batch_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():  # dropout on an Apple GPU draws from its own generator
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    """Put back what rng_state saved."""
    import numpy as np
    import torch

    random.setstate(_list_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    batch_gen.set_state(state["batches"])


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


def restore_progress(
    ckpt: dict, model, optimizer, scheduler, scaler, batch_gen, average=None
) -> Progress:
    """Load a resume checkpoint's state into a freshly built run's parts (weights, optimizer,
    schedule, scaler, RNGs, the weights' average) and return how far it had got."""
    model.load_state_dict(ckpt["model"], strict=True)
    if average is not None:
        if ckpt.get("average") is None:
            raise CLIError(
                "the checkpoint's settings keep an average of the weights (--ema "
                f"{average.decay}) but it holds none; it cannot be resumed, start afresh"
            )
        average.load_state_dict(ckpt["average"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], batch_gen)
    train_config = ckpt.get("train_config") or {}
    steps = ckpt.get("steps")  # absent in checkpoints from before steps.csv: the record starts here
    set_by_flag = {"max_iters": train_config.get("max_iters"), "fixed_by": "--max-iters"}
    return Progress(
        step=ckpt["step"],
        best_val=ckpt["best_val_loss"],
        best_step=ckpt["best_step"],
        history=list(ckpt["history"]),
        steps=[] if steps is None else [(int(s), loss, lr) for s, loss, lr in steps.tolist()],
        step_loss=ckpt["step_loss"],
        schedule=ckpt.get("schedule", set_by_flag),
    )
