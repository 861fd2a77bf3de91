"""Command-line plumbing every script shares: the one-line error, running a main() (out of memory
becomes one line naming the flag to lower), and stopping a long run between steps. The settings'
flags are generated in slm/settings.py."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A failure the user can fix: a missing or damaged file, a full disk, bad data. Scripts print
    it as one line and exit with its code: 1."""

    code = 1


class UsageError(CLIError):
    """A command line that is wrong on any machine: a flag's value out of range, flags that do not
    go together. Exit 2, as argparse's own usage errors."""

    code = 2


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if it has none), without terminal
    colour
    codes: libraries' messages can run to many lines, and a CLIError must stay one line."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a script's main(): a CLIError becomes one line on stderr and exit status 1 (2 for a
    UsageError), running out of memory too (out_of_memory_error: one line naming the flag to
    lower); Ctrl-C exits 130."""
    try:
        main(argv)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        error = out_of_memory_error(e, Path(main.__code__.co_filename).stem)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.code)


# ----------------------------------------------------------------------------- out of memory
#
# What was running when memory ran out (the first of the script's functions below that is in the
# traceback), and the way out: the flag that sets the memory it needs.

_SMALLER_BATCH = (
    "lower --batch-size and raise --grad-accum by the same factor (the same sequences per "
    "optimizer step: the same run; --resume takes the pair too); the files saved before are kept"
)
OOM_WAYS_OUT = {
    "training": [
        ("training.py", "train_step", "in a training step", _SMALLER_BATCH),
        ("training.py", "evaluate", "in an evaluation", _SMALLER_BATCH),
        ("training.py", "train", "in training", _SMALLER_BATCH),
    ],
    "evaluate": [
        ("evaluate.py", "score_tokens", "scoring", "lower --batch-size (windows per forward pass)"),
        (
            "model.py",
            "GPT.generate_stream_logits",
            "generating",
            "lower --max-new-tokens (the context the model attends over, and its cache, grow with "
            "each new token)",
        ),
    ],
    "model_usage": [
        (
            "model.py",
            "GPT.generate_stream_logits",
            "generating",
            "lower --max-new-tokens or shorten the prompt (the context the model attends over, "
            "and its cache, grow with each new token)",
        )
    ],
}


_GPU_MEMORY = ("CUDA", "MPS", "HIP", "XPU")  # in the messages of torch's GPU backends


def out_of_memory(e: BaseException) -> str | None:
    """What ran out ("GPU memory", "CPU memory", or "memory") when e, or what it was raised from, is
    an allocation failure; else None. torch raises torch.OutOfMemoryError
    (torch.cuda.OutOfMemoryError) on CUDA, a RuntimeError saying "out of memory" from other GPU
    backends and "can't allocate memory" from its CPU allocator; Python raises MemoryError.
    slm/plan.py asks this too, to shrink a micro-batch that does not fit."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if isinstance(e, MemoryError) or (
            isinstance(e, RuntimeError) and "can't allocate memory" in text
        ):
            return "CPU memory"
        oom_class = type(e).__name__ == "OutOfMemoryError"
        if oom_class or (isinstance(e, RuntimeError) and "out of memory" in text.lower()):
            return (
                "GPU memory" if oom_class or any(gpu in text for gpu in _GPU_MEMORY) else "memory"
            )
        e = e.__cause__ or e.__context__
    return None


def _allocation(text: str) -> str:
    """' (tried to allocate 2.00 GiB; 1.06 GiB free of 79.19 GiB)' out of torch's message, or ''."""
    size = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", text)
    nbytes = re.search(r"tried to allocate (\d+) bytes", text)
    if nbytes:
        size = f"{int(nbytes.group(1)) / 2**20:,.0f} MiB"
    elif size:
        size = size.group(1)
    free = re.search(
        r"total capacity of ([\d.]+ [KMGT]iB) of which ([\d.]+ [KMGT]iB) is " r"free", text
    )
    parts = [f"tried to allocate {size}"] if size else []
    parts += [f"{free.group(2)} free of {free.group(1)}"] if free else []
    return f" ({'; '.join(parts)})" if parts else ""


def out_of_memory_error(e: BaseException, script: str) -> CLIError | None:
    """One line for running out of memory in script (its file's stem): what ran out, what was
    running, what it tried to allocate, and the flag to lower; None when e is not an
    out-of-memory error."""
    memory = out_of_memory(e)
    if memory is None:
        return None
    frames = [
        (Path(f.f_code.co_filename).name, getattr(f.f_code, "co_qualname", f.f_code.co_name))
        for f, _ in traceback.walk_tb(e.__traceback__)
    ]
    doing, way_out = "", "use a smaller model or a machine with more memory"
    for file, function, what, advice in OOM_WAYS_OUT.get(script, []):
        if (file, function) in frames:
            doing, way_out = f" {what}", advice
            break
    return CLIError(f"out of {memory}{doing}{_allocation(str(e))}: {way_out}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown flag, bad value) are UsageErrors: one line under
    run_cli, exit 2; parser.error is the way for a script's own checks of its flags too."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- stopping a long run


class StopRequest:
    """Ctrl-C / SIGTERM set a flag that the loop reads between steps; a second Ctrl-C aborts at
    once.
    """

    def __init__(self, say):
        self.signal = None
        self.say = say
        self.old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.say(
            f"\n{self.signal}: stopping after this step and saving ckpt.pt (Ctrl-C again aborts "
            "at once)"
        )

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False
