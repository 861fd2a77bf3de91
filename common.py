"""Small helpers more than one step needs: clean command-line errors, the model's command-line flags,
device and dtype choice, GPU peaks, atomic file writes, the one checkpoint format, and how a checkpoint's
training data is described.

Rooms import from here instead of repeating these blocks (nanoGPT pastes its device/dtype block
into three scripts; llama2.c its checkpoint-key fix into four).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

from config import PRESETS, GPTConfig


class CLIError(Exception):
    """A problem with the user's input or files. Scripts print it as one line and exit with 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none), without terminal colour
    codes: libraries' messages can run to many lines, and a CLIError must stay one line."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a script's main(): a CLIError becomes one line on stderr and exit status 2, Ctrl-C exits 130."""
    try:
        main(argv)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown flag, bad value) are CLIErrors: one line under run_cli, exit 2."""

    def error(self, message: str):
        raise CLIError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- settings flags
#
# One flag per field of a settings dataclass (--n-layer for GPTConfig.n_layer), defaulting to None, which
# means "the preset's value". model.py and training.py take the model's flags from here.

MODEL_HELP = {
    "vocab_size": "vocabulary size; must match the tokenizer's (DATA/meta.json)",
    "block_size": "context length in tokens",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block (must divide --n-embd)",
    "n_embd": "width of the residual stream",
    "dropout": "dropout probability on attention, residual branches and embeddings",
    "bias": "biases in Linear and LayerNorm layers",
}


def preset_values(group: str, name: str) -> str:
    """A setting's value in every preset, for --help; group is "model" or "train" (a Preset attribute)."""
    values = [getattr(getattr(PRESETS[p], group), name) for p in PRESETS]
    if len(set(map(str, values))) == 1:
        return f"all presets: {values[0]}"
    return "presets " + ", ".join(f"{p} {v}" for p, v in zip(PRESETS, values))


def add_settings_flags(parser: argparse.ArgumentParser, group: str, cls, helps: dict[str, str],
                       aliases: dict[str, list[str]] | None = None) -> None:
    """Add a "{group} settings" group with one flag per field of the dataclass cls, each help text from
    helps followed by the presets' values; booleans get --x / --no-x."""
    arg_group = parser.add_argument_group(f"{group} settings")
    for f in fields(cls):
        flags = ["--" + f.name.replace("_", "-")] + (aliases or {}).get(f.name, [])
        help_text = f"{helps[f.name]} [{preset_values(group, f.name)}]"
        if isinstance(f.default, bool):
            arg_group.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            arg_group.add_argument(*flags, type=type(f.default), default=None, metavar=f.name.upper(), help=help_text)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--vocab-size, --block-size, --n-layer, --n-head, --n-embd, --dropout, --bias/--no-bias."""
    add_settings_flags(parser, "model", GPTConfig, MODEL_HELP)


def model_flags_given(args: argparse.Namespace) -> dict:
    """The GPTConfig fields set on the command line (the others keep the preset's values)."""
    return {f.name: getattr(args, f.name) for f in fields(GPTConfig) if getattr(args, f.name) is not None}


def check_model_config(mc: GPTConfig) -> None:
    """One clear CLIError for the first model setting a GPT cannot be built with."""
    for flag, value in (("--block-size", mc.block_size), ("--n-layer", mc.n_layer), ("--n-head", mc.n_head),
                        ("--n-embd", mc.n_embd), ("--vocab-size", mc.vocab_size)):
        if value < 1:
            raise CLIError(f"{flag} {value} must be at least 1")
    if not 0 <= mc.dropout < 1:
        raise CLIError(f"--dropout {mc.dropout} must be in [0, 1)")
    if mc.n_embd % mc.n_head:
        raise CLIError(f"--n-embd {mc.n_embd} is not divisible by --n-head {mc.n_head}; "
                       f"pick a head count that divides it (e.g. {math.gcd(mc.n_embd, mc.n_head)})")


# ----------------------------------------------------------------------------- device and dtype


def pick_device(name: str = "auto") -> str:
    """'auto' means cuda if available, then mps, then cpu. Anything else is checked and returned."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asked for, but CUDA is not available here; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CLIError("--device mps asked for, but MPS is not available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise CLIError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware and oneDNN will use it: x86 AVX512_BF16 or AMX,
    Arm BF16. oneDNN alone (torch.ops.mkldnn._is_mkldnn_bf16_supported) also says yes to plain AVX-512,
    where it emulates bfloat16 at no gain, so both checks must agree."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.10: cpuinfo's feature flags
        caps = torch.cpu.get_capabilities()
        return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch: x86 only
    return bool(check and check())


def pick_dtype(name: str, device: str) -> str:
    """'auto' means bfloat16 on a GPU that supports it, float16 on other GPUs, bfloat16 on a CPU with native
    bfloat16 (twice float32's training speed on an AVX512_BF16 CPU, the same loss per step), else float32."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "cpu" and cpu_has_native_bf16():
            return "bfloat16"
        return "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise CLIError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return name


def autocast(device: str, dtype: str):
    """Mixed-precision context for forward passes; a no-op for float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else device
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


# Dense (no sparsity) 16-bit tensor-core peak FLOP/s of one GPU at its boost clock, from NVIDIA's datasheets and
# architecture whitepapers: bf16 with fp32 accumulation, as torch's matmuls run; fp16 on GPUs without bf16 (T4,
# V100). The MFU denominator. Patterns are searched in torch.cuda.get_device_name(), first match wins.
GPU_PEAK_FLOPS = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL|H200.*NVL", 835e12),
    (r"H100|H200", 989e12),  # SXM, and the Grace Hopper GH200
    (r"A100", 312e12),  # SXM and PCIe alike
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),  # not the A10G (AWS's variant, slower tensor cores, no NVIDIA datasheet): unknown
    (r"RTX 4090(?! D)(?!.*Laptop)", 165e12),  # GeForce: half-rate fp32 accumulation (330 with fp16 accumulation)
    (r"RTX 3090(?! Ti)(?!.*Laptop)", 71e12),  # likewise (142 with fp16 accumulation)
    (r"\bT4\b", 65e12),  # fp16: Turing has no bf16
    (r"V100.*PCIE", 112e12),  # fp16
    (r"V100", 125e12),  # fp16, SXM2
]


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called `name` (torch.cuda.get_device_name()); None if not known."""
    for pattern, peak in GPU_PEAK_FLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peak
    return None


# ----------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), then rename tmp over path: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ----------------------------------------------------------------------------- checkpoints
#
# One format for both files training writes:
#   best_model_params.pt  {"model", "config", "data", "step", "val_loss"}
#   ckpt.pt               the same keys plus {"optimizer", "scheduler", "scaler", "rng", "train_config",
#                         "best_val_loss", ...}: everything training needs to resume.
# "config" is dataclasses.asdict(GPTConfig) and "data" the tokenizer/source facts of meta.json, both
# plain dicts, so torch.load(path, weights_only=True) reads every file.


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


def model_from_checkpoint(ckpt: dict, device: str = "cpu"):
    """Rebuild the GPT from the config stored in the checkpoint (never today's defaults), strict load."""
    from model import GPT

    model = GPT(config_from_dict(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CLIError(f"checkpoint weights do not match its own config: {first_line(e)}") from None
    return model.to(device)


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
