"""The one checkpoint format, and what a checkpoint says about its training data.

One format for both files training writes:
  best_model_params.pt  {"model", "config", "data", "step", "val_loss"}
  ckpt.pt               the same keys plus {"optimizer", "scheduler", "scaler", "rng", "train_config",
                        "best_val_loss", ...}: everything training needs to resume.
"config" is dataclasses.asdict(GPTConfig) and "data" the tokenizer/source facts of meta.json, both
plain dicts, so torch.load(path, weights_only=True) reads every file. The model itself is rebuilt
from a checkpoint by model.GPT.from_checkpoint; check_vocab refuses one whose token ids mean other text.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path

from config import EOT_ID, EOT_POSITION, TOKENIZER_NAME, GPTConfig
from slm.cli import CLIError, first_line
from slm.files import check_free_space, human_bytes, saved_bytes, space_to_replace


def checkpoint_sizes(model) -> tuple[int, int]:
    """About how many bytes training's two files take for this model: best_model_params.pt holds the
    weights; ckpt.pt also AdamW's two moments (exp_avg, exp_avg_sq) per trainable parameter, the
    schedule, RNG states and the loss history (the last few, well under a megabyte)."""
    weights = saved_bytes(model.state_dict())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights, weights + moments + 1024 * len(list(model.parameters())) + (256 << 10)


def check_checkpoint_space(out_dir: str | os.PathLike, model, best_file: str, ckpt_file: str) -> None:
    """Refuse to start training (one line) when out_dir's disk cannot take the two checkpoint files."""
    weights, resume_state = checkpoint_sizes(model)
    needed = space_to_replace(out_dir, {best_file: weights, ckpt_file: resume_state})
    check_free_space(out_dir, needed, f"{best_file} and {ckpt_file} ({human_bytes(weights)} and "
                                      f"{human_bytes(resume_state)})")


def config_to_dict(config: GPTConfig) -> dict:
    return asdict(config)


def config_from_dict(d: dict) -> GPTConfig:
    known = {f.name for f in fields(GPTConfig)}
    unknown = set(d) - known
    if unknown:
        raise CLIError(f"checkpoint has unknown model settings {sorted(unknown)}; was it made by another tool?")
    return GPTConfig(**d)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load a checkpoint dict safely (weights_only), with one clear error for each way it can be bad."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CLIError(f"no checkpoint at {path}; train one first with: python training.py")
    if path.is_dir():
        raise CLIError(f"{path} is a directory; pass the checkpoint file (e.g. {path / 'best_model_params.pt'})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickles of arbitrary objects, ...
        raise CLIError(f"{path} is not a readable checkpoint (truncated or not made by training.py): {first_line(e)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CLIError(f"{path} is not a checkpoint made by training.py (no 'model' and 'config' entries)")
    return ckpt


def check_vocab(ckpt: dict, enc, path) -> None:
    """Refuse a checkpoint whose vocabulary is not the tokenizer's: its token ids would mean other text."""
    data = ckpt.get("data") or {}
    tokenizer = data.get("tokenizer", TOKENIZER_NAME)
    model_vocab = ckpt["config"].get("vocab_size")
    if tokenizer != TOKENIZER_NAME or model_vocab != enc.n_vocab or data.get("vocab_size", enc.n_vocab) != enc.n_vocab:
        raise CLIError(
            f"{path} was trained with tokenizer {tokenizer!r} and a vocabulary of {model_vocab} tokens, but this "
            f"project's tokenizer is {TOKENIZER_NAME!r} with {enc.n_vocab}; retrain with: python training.py"
        )
    eot = data.get("eot_id", EOT_ID)
    if eot != EOT_ID or data.get("eot_position", EOT_POSITION) != EOT_POSITION:
        raise CLIError(
            f"{path} puts end-of-text token {eot} {data.get('eot_position')!r} each story, but this project uses "
            f"{EOT_ID} {EOT_POSITION!r}; retrain with: python training.py"
        )


# ----------------------------------------------------------------------------- where a checkpoint's data came from


def describe_source(ckpt: dict) -> str:
    """What the checkpoint was trained on, in a few words; a demo corpus (older checkpoints) is said loudly."""
    source = (ckpt.get("data") or {}).get("source") or {}
    kind = source.get("source")  # load_dataset.py's raw/source.json, copied into meta.json and the checkpoint
    if kind is None:
        return "training data unknown (the checkpoint does not record it)"
    if source.get("demo"):  # checkpoints from before the bundled sample, trained on generated stories
        return "trained on a DEMO CORPUS (generated stories, not TinyStories)"
    if kind == "sample":
        why = "; the hub could not be reached" if source.get("fallback_reason") else ""
        n = ((source.get("splits") or {}).get("train") or {}).get("stories")
        size = f", {n:,} train stories" if isinstance(n, int) else ""
        return f"trained on the TinyStories sample bundled in sample_data/tinystories (real stories{size}{why})"
    if kind == "hub":
        return f"trained on TinyStories from the Hugging Face hub ({source.get('dataset', 'roneneldan/TinyStories')})"
    if kind == "local":
        files = ", ".join(f"{split}={path}" for split, path in (source.get("data_files") or {}).items())
        return f"trained on local files ({files})"
    return f"trained on source {kind!r}"
