"""Small helpers more than one step needs: clean command-line errors, the model's command-line flags,
device and dtype choice, GPU peaks, atomic file writes with one-line errors for a full or failing disk,
one writer per directory, the one checkpoint format, and how a checkpoint's training data is described.

Rooms import from here instead of repeating these blocks (nanoGPT pastes its device/dtype block
into three scripts; llama2.c its checkpoint-key fix into four).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import shutil
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
    bfloat16 (1.5x float32's training speed for the cpu preset on an AVX512_BF16 CPU, the same loss per
    step within noise: benchmarks/training.md), else float32."""
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


# ----------------------------------------------------------------------------- writing files
#
# What a user's machine does to writes: the disk fills, a directory is read-only or not ours, a disk
# fails, two runs write into one directory. Every write goes through atomic_write (a file) or
# write_errors (a directory such as DATA/raw), so each of these is one CLIError line that names the
# file, the space it needed and had, and the fix, with the previous version still in place.

SPACE_MARGIN = 0.10  # check_free_space asks for 10% more than an estimate, plus SPACE_SLACK: estimates are rough
SPACE_SLACK = 1 << 20
LOCK_NAME = ".lock"  # DIR/.lock: held (flock) by the one process writing into DIR, removed when it is done
_WRITE_TROUBLE = {
    errno.ENOSPC: "no space left on device",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
}


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, as df -h counts."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _nearest_existing(path: str | os.PathLike) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged process may still write on the file system that holds (or will hold) path."""
    return shutil.disk_usage(_nearest_existing(path)).free


def filesystem(path: str | os.PathLike) -> str:
    """The file system that holds path, in words: '/dev/sda1', 'tmpfs at /mnt/small'."""
    p = os.path.realpath(_nearest_existing(path))
    best = None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                device, mount = line.split()[:2]
                mount = mount.replace("\\040", " ")
                if p == mount or p.startswith(mount.rstrip("/") + "/"):
                    if best is None or len(mount) >= len(best[1]):  # the innermost (and, of equals, the latest) mount
                        best = (device, mount)
    except (OSError, ValueError):
        pass
    if best is None:  # no /proc (macOS, ...): name the mount point
        q = Path(p)
        while not os.path.ismount(q) and q != q.parent:
            q = q.parent
        return f"the file system at {q}"
    device, mount = best
    return device if device.startswith("/") else f"{device} at {mount}"


def check_free_space(directory: str | os.PathLike, needed: int, what: str, flag: str = "--out-dir") -> None:
    """Refuse, in one line, to start work whose output will not fit: needed is an estimate in bytes."""
    free = free_bytes(directory)
    wanted = needed * (1 + SPACE_MARGIN) + SPACE_SLACK
    if free < wanted:
        raise CLIError(f"not enough space in {directory} for {what}: about {human_bytes(needed)} needed "
                       f"({human_bytes(wanted)} with a margin), {human_bytes(free)} free on {filesystem(directory)}; "
                       f"free space or pass another {flag} (nothing was started)")


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError with an errno behind e (e itself, or what it was raised from): libraries wrap them."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, (BlockingIOError, InterruptedError)):
            code = e.errno
            if code is None:  # pyarrow and friends put the errno in the text only
                m = re.search(r"\[errno (\d+)\]", str(e), re.IGNORECASE)
                code = int(m.group(1)) if m else None
            if code is not None:
                return OSError(code, os.strerror(code)) if e.errno is None else e
        e = e.__cause__ or e.__context__
    return None


def is_write_trouble(e: BaseException) -> bool:
    """Whether e comes from the disk refusing a write (full, over quota, read-only): never the input's fault."""
    os_error = _os_error_in(e)
    return os_error is not None and os_error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EROFS)


def write_error(e: BaseException, path: str | os.PathLike, needed: int | None = None,
                flag: str = "--out-dir") -> CLIError | None:
    """One line for a failed write of path (after its temporary file is gone); None when e is not an
    OS error, unless the disk is visibly too small for needed (torch.save hides the errno then)."""
    path = Path(path)
    os_error = _os_error_in(e)
    free = free_bytes(path.parent)
    if os_error is not None:
        code = os_error.errno
    elif needed is not None and free < needed:
        code = errno.ENOSPC
    else:
        return None
    shown = path.name + ("/" if path.is_dir() else "")
    kept = f"the previous {shown} is intact" if path.exists() else f"no partial {shown} was left"
    trouble = _WRITE_TROUBLE.get(code)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        # an estimate below what is free now was too low: what the failed write took was all there was
        need = f"about {human_bytes(needed)}" if needed and needed > free else f"more than {human_bytes(free)}"
        need += " needed, "
        msg = (f"{trouble} writing {path} ({need}{human_bytes(free)} free on {filesystem(path.parent)}); "
               f"free space or pass another {flag}")
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"{trouble} writing {path}; make {path.parent} writable or pass another {flag}"
    elif code == errno.EROFS:
        msg = f"{trouble} writing {path} ({filesystem(path.parent)}); pass another {flag} on a writable disk"
    elif code == errno.EIO:
        msg = (f"{trouble} writing {path} on {filesystem(path.parent)} (the disk may be failing: see dmesg); "
               f"pass another {flag}")
    else:
        msg = f"could not write {path} ({os.strerror(code)}); pass another {flag}"
    return CLIError(f"{msg}; {kept}")


class WriteTarget:
    """What a write_errors block is writing: its path and its expected size, which the block may refine."""

    def __init__(self, path: str | os.PathLike, needed: int | None):
        self.path, self.needed = Path(path), needed


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, needed: int | None = None, flag: str = "--out-dir"):
    """Inside, an OS error (disk full, read-only, permission, I/O) becomes write_error's one-line CLIError.

    The block must clean up its temporary files itself (try/finally inside), so the free space reported
    is what the user has after the failure."""
    target = WriteTarget(path, needed)
    try:
        yield target
    except CLIError:
        raise
    except Exception as e:
        error = write_error(e, target.path, target.needed, flag)
        if error is None:
            raise
        raise error from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], needed: int | None = None,
                 flag: str = "--out-dir") -> None:
    """Call write(tmp_path), then rename tmp over path: readers see the old file or the new one, never half.

    On failure the temporary file is removed, the old file stays, and an OS error is one CLIError line
    (needed: the expected size in bytes, for that line; flag: the option that picks the directory)."""
    path = Path(path)
    with write_errors(path, needed, flag):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, flag: str = "--out-dir") -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), needed=len(data), flag=flag)


def saved_bytes(obj: Any) -> int:
    """About how many bytes torch.save writes for obj: each tensor storage once, plus a little per entry."""
    import torch

    seen: set[int] = set()

    def size(x) -> int:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            if storage.data_ptr() in seen and storage.nbytes():
                return 64
            seen.add(storage.data_ptr())
            return storage.nbytes() + 512  # plus its zip entry and pickle record
        if isinstance(x, dict):
            return sum(size(k) + size(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return sum(size(v) for v in x) + 16
        return 32

    return size(obj) + 4096


def atomic_torch_save(obj: Any, path: str | os.PathLike, flag: str = "--out-dir") -> None:
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a Python file: its OSError (errno) stays behind torch's RuntimeError
            torch.save(obj, f)

    atomic_write(path, save, needed=saved_bytes(obj), flag=flag)


def space_to_replace(directory: str | os.PathLike, sizes: dict[str, int]) -> int:
    """Free bytes needed to atomic_write these files into directory one after another, in this order:
    each new file is written beside its old version, which is freed once the new one is renamed over it."""
    peak = grown = 0
    for name, size in sizes.items():
        peak = max(peak, grown + size)
        old = Path(directory) / name
        grown += size - (old.stat().st_size if old.is_file() else 0)
    return peak


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


# ----------------------------------------------------------------------------- one writer per directory

_held_lock_fds: set[int] = set()


def _close_inherited_locks() -> None:
    """In a forked child (tokenization's workers): close the copies of our lock files, so a child that
    outlives a killed parent never keeps the parent's lock (flock locks follow the open file, not the pid)."""
    for fd in _held_lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"pid {pid}: {command}" if command else f"pid {pid}"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, flag: str = "--out-dir"):
    """Be the one process writing into directory (created if missing) while the block runs.

    A second writer gets one CLIError line naming the directory and the process that holds it. The lock
    is flock(2) on DIR/.lock: the kernel drops it when its holder dies, even by SIGKILL, so a file left
    behind never blocks the next run. Readers take no lock: they only open files renamed into place.
    Where flock is missing (Windows) the block runs without the lock."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise CLIError(f"{flag} {d} is a file, not a directory; pass a directory (it is created if missing)")
    created = not d.exists()
    with write_errors(d, flag=flag):
        d.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    path = d / LOCK_NAME
    fd = None
    try:
        while fcntl is not None:
            with write_errors(d, flag=flag):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                raise CLIError(f"another run is writing into {d} ({holder}); wait for it to finish or stop it, "
                               f"or pass another {flag}") from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the last holder removed this file while we waited: lock the one there now
            fd = None
        if fd is not None:
            _held_lock_fds.add(fd)
            os.ftruncate(fd, 0)
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
            command = command if len(command) <= 300 else command[:297] + "..."
            os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield
    finally:
        if fd is not None:
            if fd in _held_lock_fds:
                _held_lock_fds.discard(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)  # while still holding it: a waiter that opened this file retries
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: a run that wrote nothing leaves no directory behind


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
