"""The faults of an ordinary machine, each injected and each ending cleanly: a disk that fills up
(ENOSPC) or fails (EIO) at every write, a job preempted by SIGTERM (under torchrun too), memory
running out.

Writes: SQLite's way of testing I/O errors. Each script's main path runs with a fault at its Nth
write-like call, for every N until the run passes untouched. The test finds the write sites
itself: a fixture patches the low-level calls every write goes through (open for writing, and the
first write and the close of each file so opened; os.open for writing, os.write, os.ftruncate,
os.replace/os.rename, os.mkdir of a new directory, os.link, torch.save), counts those aimed at
the run's directories and fails the Nth one. A clean run first checks that every file it created
or changed went through a patched call, so a write that goes round them is caught, not missed.
For each N:

- the run ends with one `error:` line and exit status 1 (run_cli's contract), never a traceback;
- every file that existed before is byte-identical afterwards (training: or is a complete version
  this run
  renamed into place before the fault); nothing else is left, and no .tmp, .partial or .old;
- a fault may be absorbed (the run succeeds) only where that is the design: the PID line in
  DIR/.lock,
  which is advice for a human (slm/files.dir_lock).

Unmarked: ENOSPC at the first call of each line that writes. Marked slow: every N, for ENOSPC and
EIO once, and for a full disk (ENOSPC from the Nth write on, as a disk with 0 bytes free
behaves). Each test prints what it found (write-like calls, the code paths they come from, the
lines that write): run with -rA.

Memory: torch.cuda.OutOfMemoryError and the CPU allocator's error, raised from a patched forward
in a training step, an evaluation, scoring and generation, are one line naming the flag to lower
(slm/cli.run_cli). Preemption: SIGTERM to python or to the torchrun launcher saves ckpt.pt, and
the command printed to continue ends with the weights of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import export_hf
import load_dataset
import model_usage
import tokenization
import training
from slm.cli import run_cli
from slm.files import LOCK_NAME

REPO = Path(__file__).resolve().parent.parent
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# what a full disk refuses; renames still work
DATA_OPS = {"write", "close", "os.write", "ftruncate", "torch.save"}
LEFTOVER = (".tmp", ".partial", ".old")
ABSORBED_BY_DESIGN = {LOCK_NAME}  # the lock's PID line: the lock holds without it, the run goes on
# the evaluation's sample writes nothing and costs most of a smoke run
NO_SAMPLES = ["--no-samples"]
SMOKE = [
    *NO_SAMPLES,
    "--preset",
    "smoke",
    "--max-iters",
    "1",
    "--eval-interval",
    "1",
    "--eval-iters",
    "1",
    "--batch-size",
    "1",
    "--block-size",
    "16",
    "--warmup-iters",
    "0",
    "--no-progress",
]
# Each script's main path: (its main, the world it runs in, its arguments, whether its output is one
# whole).
# training: evaluations at steps 0 and 1, each saving best_model_params.pt, ckpt.pt, log.csv,
# loss.png (and whatever else it writes by then) over a previous run's files; a save that fails
# after an earlier one of the same run leaves that earlier one. The others' output is one whole: a
# failure leaves every file as it was.
SCRIPTS = {
    "load_dataset": (
        load_dataset.main,
        "load",
        lambda r: ["--source", "sample", "--num-stories", "12", "--data-dir", f"{r}/data"],
        True,
    ),
    "tokenization": (
        tokenization.main,
        "tokenize",
        lambda r: ["--data-dir", f"{r}/data", "--num-proc", "1"],
        True,
    ),
    "training": (
        training.main,
        "train",
        lambda r: [*SMOKE, "--data-dir", f"{r}/data", "--out-dir", f"{r}/out"],
        False,
    ),
    "export_hf": (
        export_hf.main,
        "export",
        lambda r: ["--checkpoint", f"{r}/new/best_model_params.pt", "--out", f"{r}/hf"],
        True,
    ),
    "evaluate": (
        evaluate.main,
        "use",
        lambda r: [
            "--checkpoint",
            f"{r}/out/best_model_params.pt",
            "--data-dir",
            f"{r}/data",
            "--num-samples",
            "1",
            "--max-new-tokens",
            "4",
            "--quiet",
        ],
        True,
    ),
    "model_usage": (
        model_usage.main,
        "use",
        lambda r: [
            "--checkpoint",
            f"{r}/out/best_model_params.pt",
            "--max-new-tokens",
            "4",
            "--seed",
            "1",
        ],
        True,
    ),
}
WRITERS = [s for s in SCRIPTS if SCRIPTS[s][1] != "use"]


# ----------------------------------------------------------------------------- the fault injector


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under root: relative path -> sha256 of a file, "dir" for a
    directory.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            p = Path(dirpath, name)
            out[os.path.relpath(p, root)] = _sha(p)
    return out


def _site() -> tuple[str, ...]:
    """The frames of the project's own code (not the tests, not a library) that led to this call,
    innermost
    first: the code path of the write (its first entry is the line that writes)."""
    frame, chain = sys._getframe(2), []
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(str(REPO)) and "/.venv/" not in name and "/tests/" not in name:
            chain.append(f"{os.path.relpath(name, REPO)}:{frame.f_lineno}")
        frame = frame.f_back
    return tuple(chain) or ("?",)


class _File:
    """A file opened for writing under the run's directories: its first write and its close are
    fault points (a full disk fails a write, or the flush at close); later writes are the same
    site and pass through."""

    def __init__(self, f, path: str, faults: WriteFaults):
        self._f, self._path, self._faults, self._wrote = f, path, faults, False

    def write(self, data):
        if not self._wrote:
            self._faults.hit("write", self._path)
            self._wrote = True
        return self._f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def close(self):
        if self._wrote and not self._f.closed:
            self._wrote = False
            try:
                self._faults.hit("close", self._path)
            except OSError:
                self._f.close()
                raise
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        return iter(self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)


class WriteFaults:
    """Counts the write-like calls aimed under root and fails the fail_at-th one with OSError(code)
    (with persistent, every data write from there on too, as a disk with 0 bytes free does).
    Records what the run renamed into place, and every path it wrote, for the checks."""

    def __init__(self, monkeypatch, root: Path):
        self.root = str(root)
        self.fail_at, self.code, self.persistent = None, errno.ENOSPC, False
        self.calls: list[tuple[str, str, tuple]] = []  # (op, path under root, code path)
        self.fired: tuple[str, str, tuple] | None = None
        # path -> sha256 as renamed into place (None: moved away)
        self.published: dict[str, str | None] = {}
        self.written: set[str] = set()
        self.fds: dict[int, str] = {}
        self._patch(monkeypatch)

    def reset(
        self, fail_at: int | None, code: int = errno.ENOSPC, persistent: bool = False
    ) -> None:
        self.fail_at, self.code, self.persistent = fail_at, code, persistent
        self.calls, self.fired, self.published, self.written = [], None, {}, set()

    def _under(self, path) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        p = os.path.abspath(os.fsdecode(path))
        return p if p.startswith(self.root + os.sep) else None

    def hit(self, op: str, path) -> None:
        p = self._under(path)
        if p is None:
            return
        self.written.add(p)
        self.calls.append((op, os.path.relpath(p, self.root), _site()))
        n = len(self.calls)
        if self.fail_at is not None and (
            n == self.fail_at or (self.persistent and n > self.fail_at and op in DATA_OPS)
        ):
            self.fired = self.fired or self.calls[-1]
            raise OSError(self.code, os.strerror(self.code), p)

    def _moved(self, src: str, dst: str) -> None:
        """After os.replace(src, dst): what now sits at dst (and no longer at src) was renamed into
        place.
        """
        s, d = self._under(src), self._under(dst)
        if d is None:
            return
        if os.path.isdir(d):
            for dirpath, _, filenames in os.walk(d):
                for name in filenames:
                    q = os.path.join(dirpath, name)
                    self.published[q] = _sha(Path(q))
                    if s is not None:
                        self.published[os.path.join(s, os.path.relpath(q, d))] = None
                    self.written.add(q)
        else:
            self.published[d] = _sha(Path(d))
            if s is not None:
                self.published[s] = None
        self.written.add(d)

    def _patch(self, mp) -> None:
        real_open, real_os_open, real_write, real_close = builtins.open, os.open, os.write, os.close
        real_ftruncate, real_replace, real_rename, real_mkdir = (
            os.ftruncate,
            os.replace,
            os.rename,
            os.mkdir,
        )
        real_link, real_save = os.link, torch.save

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and self._under(file):
                self.hit("open", file)
                return _File(real_open(file, mode, *args, **kwargs), os.fsdecode(file), self)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & WRITE_FLAGS:
                self.hit("os.open", path)
            fd = real_os_open(path, flags, *args, **kwargs)
            if flags & WRITE_FLAGS and self._under(path):
                self.fds[fd] = path
            return fd

        def os_write(fd, data):
            self.hit("os.write", self.fds.get(fd))
            return real_write(fd, data)

        def os_close(fd):
            self.fds.pop(fd, None)
            return real_close(fd)

        def ftruncate(fd, length):
            self.hit("ftruncate", self.fds.get(fd))
            return real_ftruncate(fd, length)

        def mover(real, op):
            def move(src, dst, *args, **kwargs):
                self.hit(op, dst)
                real(src, dst, *args, **kwargs)
                self._moved(src, dst)

            return move

        def mkdir(path, *args, **kwargs):
            if not os.path.lexists(path):  # an existing directory is EEXIST, never a full disk
                self.hit("mkdir", path)
            return real_mkdir(path, *args, **kwargs)

        def link(src, dst, *args, **kwargs):
            self.hit("link", dst)
            return real_link(src, dst, *args, **kwargs)

        def save(obj, f, *args, **kwargs):
            self.hit(
                "torch.save", f if isinstance(f, (str, os.PathLike)) else getattr(f, "_path", None)
            )
            return real_save(obj, f, *args, **kwargs)

        for target, name, fake in [
            (builtins, "open", open_),
            (io, "open", open_),
            (os, "open", os_open),
            (os, "write", os_write),
            (os, "close", os_close),
            (os, "ftruncate", ftruncate),
            (os, "replace", mover(real_replace, "rename")),
            (os, "rename", mover(real_rename, "rename")),
            (os, "mkdir", mkdir),
            (os, "link", link),
            (torch, "save", save),
        ]:
            mp.setattr(target, name, fake)


# ----------------------------------------------------------------------------- the worlds the
# scripts run in


def quiet_cli(main, argv) -> int:
    try:
        run_cli(main, argv)
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    """A directory per kind of run, holding what exists before it: the outputs it replaces."""
    base = tmp_path_factory.mktemp("worlds")

    def ok(main, argv):
        assert quiet_cli(main, argv) == 0, argv

    load = base / "load"  # raw/ of 8 stories; the run makes 12
    ok(
        load_dataset.main,
        ["--source", "sample", "--num-stories", "8", "--data-dir", str(load / "data")],
    )
    tok = base / "tokenize"  # bins of 8 stories; raw/ of 12 since: the run re-tokenizes
    shutil.copytree(load, tok)
    ok(tokenization.main, ["--data-dir", str(tok / "data"), "--num-proc", "1"])
    ok(
        load_dataset.main,
        ["--source", "sample", "--num-stories", "12", "--data-dir", str(tok / "data")],
    )
    # data, and out/ from a run with another seed: the run starts afresh over it
    train = base / "train"
    shutil.copytree(tok, train)
    ok(tokenization.main, ["--data-dir", str(train / "data"), "--num-proc", "1"])
    ok(
        training.main,
        [*SMOKE, "--seed", "7", "--data-dir", str(train / "data"), "--out-dir", str(train / "out")],
    )
    export = base / "export"  # hf/ exported from out/; the run exports new/ over it
    shutil.copytree(train / "out", export / "out")
    ok(
        training.main,
        [
            *SMOKE,
            "--seed",
            "8",
            "--data-dir",
            str(train / "data"),
            "--out-dir",
            str(export / "new"),
        ],
    )
    ok(
        export_hf.main,
        ["--checkpoint", str(export / "out" / "best_model_params.pt"), "--out", str(export / "hf")],
    )
    return {"load": load, "tokenize": tok, "train": train, "export": export, "use": train}


# ----------------------------------------------------------------------------- one run, checked


class Outcome:
    def __init__(self, code, err, before, after, faults, fault: int):
        self.code, self.err, self.before, self.after, self.fault = code, err, before, after, fault
        self.fired, self.calls = faults.fired, list(faults.calls)
        self.published = {os.path.relpath(p, faults.root): v for p, v in faults.published.items()}


def run_once(
    script: str,
    world: Path,
    root: Path,
    faults: WriteFaults,
    capsys,
    fail_at: int | None,
    code: int = errno.ENOSPC,
    persistent: bool = False,
) -> Outcome:
    """A fresh copy of the world under root, the script run on it with the fault set, before and
    after.
    """
    main, _, argv, _ = SCRIPTS[script]
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(world, root)
    before = snapshot(root)
    capsys.readouterr()
    faults.reset(fail_at, code, persistent)
    status = quiet_cli(main, argv(root))
    faults.fail_at = None
    err = capsys.readouterr().err
    return Outcome(status, err, before, snapshot(root), faults, code)


def check_failed_cleanly(o: Outcome, clean_after: dict[str, str], whole: bool) -> None:
    """One error line and exit 1 (or, where a fault is absorbed by design, a complete run); every
    file as it was (whole: an output that is one whole), or as this run renamed it into place;
    nothing else left behind."""
    what = f"{errno.errorcode[o.fault]} at {o.fired}"
    if o.code == 0:
        assert Path(o.fired[1]).name in ABSORBED_BY_DESIGN, f"a failed write was ignored: {what}"
        assert set(o.after) == set(clean_after), what
        return
    lines = [line for line in o.err.splitlines() if line.strip()]
    assert o.code == 1 and "Traceback" not in o.err, f"{what}: exit {o.code}\n{o.err}"
    assert (
        lines
        and lines[-1].startswith("error: ")
        and sum(line.startswith("error:") for line in lines) == 1
    ), f"{what}: {o.err}"
    for path in sorted(set(o.before) | set(o.after)):
        now, was = o.after.get(path), o.before.get(path)
        assert not any(part.endswith(LEFTOVER) for part in Path(path).parts), f"{what}: left {path}"
        if now == was or now == "dir":
            continue
        assert not whole, (
            f"{what}: {path} {'lost' if now is None else 'changed' if was else 'left behind'}"
        )
        assert (
            path in o.published and now == o.published[path] and (now is not None or was is None)
        ), f"{what}: {path} {'lost' if now is None else 'changed' if was else 'left behind'}"


def check_every_write_was_seen(o: Outcome, root: Path, written: set[str]) -> None:
    """Each file the clean run created or changed went through a patched call (or lies in a
    directory that was renamed into place): a write that goes round the patches would escape the
    sweep."""
    for path, sha in o.after.items():
        if sha != "dir" and o.before.get(path) != sha:
            assert str(root / path) in written, (
                f"{path} was written by a call the fault injector does not see"
            )


def sweep(
    script: str, worlds, tmp_path, monkeypatch, capsys, codes, every: bool, persistent: bool = False
) -> None:
    """The clean run finds the write-like calls; then the Nth fails, for every N (every), or for the
    first call of each line that writes."""
    t0 = time.time()
    root = tmp_path / "run"
    faults = WriteFaults(monkeypatch, root)
    world = worlds[SCRIPTS[script][1]]
    clean = run_once(script, world, root, faults, capsys, None)
    assert clean.code == 0, clean.err
    check_every_write_was_seen(clean, root, faults.written)
    paths = {}  # code path that writes -> the file it first wrote
    for op, path, chain in clean.calls:
        paths.setdefault((op, chain), path)
    lines = list(dict.fromkeys((op, chain[0]) for op, _, chain in clean.calls))  # the lines that do
    firsts = [
        next(i for i, (op, _, chain) in enumerate(clean.calls, 1) if (op, chain[0]) == line)
        for line in lines
    ]
    runs = absorbed = 0
    for code in codes:
        for n in itertools.count(1) if every else firsts:
            o = run_once(script, world, root, faults, capsys, n, code, persistent)
            runs += 1
            if o.fired is None:  # past the last write: the run passes untouched
                assert o.code == 0 and n == len(clean.calls) + 1, o.err
                break
            assert o.fired[:2] == clean.calls[n - 1][:2], (
                f"write {n} is not the clean run's: {o.fired}"
            )
            check_failed_cleanly(o, clean.after, SCRIPTS[script][3])
            absorbed += o.code == 0
    names = ", ".join(errno.errorcode[c] for c in codes) + (
        " from the Nth write on" if persistent else ""
    )
    found = (
        f"{script}: {len(clean.calls)} write-like calls from {len(paths)} code paths through "
        f"{len(lines)} lines that write; {runs} faulted runs ({names}, "
        f"{'every call' if every else 'the first call of each line'}), {absorbed} absorbed by "
        f"design (the lock's PID line: the run went on), {time.time() - t0:.1f} s"
    )
    print(found)
    for (op, chain), path in paths.items():
        caller = next((f for f in chain if not f.startswith("slm/files.py")), chain[-1])
        print(f"    {op:10} {path:42} {caller} -> {chain[0]}")


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("script", WRITERS)
def test_each_line_that_writes_fails_in_one_line_and_keeps_every_file(
    script, worlds, tmp_path, monkeypatch, capsys
):
    sweep(script, worlds, tmp_path, monkeypatch, capsys, codes=[errno.ENOSPC], every=False)


@pytest.mark.parametrize("script", ["evaluate", "model_usage"])
def test_scripts_that_only_read_write_nothing(script, worlds, tmp_path, monkeypatch, capsys):
    root = tmp_path / "run"
    faults = WriteFaults(monkeypatch, root)
    o = run_once(script, worlds["use"], root, faults, capsys, None)
    assert o.code == 0, o.err
    assert o.calls == [] and o.after == o.before
    print(f"{script}: 0 write-like calls (it only reads)")


@pytest.mark.slow
@pytest.mark.parametrize(
    "persistent, codes",
    [(False, [errno.ENOSPC, errno.EIO]), (True, [errno.ENOSPC])],
    ids=["once", "disk-full"],
)
@pytest.mark.parametrize("script", WRITERS)
def test_every_write_fails_in_one_line_and_keeps_every_file(
    script, persistent, codes, worlds, tmp_path, monkeypatch, capsys
):
    sweep(
        script,
        worlds,
        tmp_path,
        monkeypatch,
        capsys,
        codes=codes,
        every=True,
        persistent=persistent,
    )


# ----------------------------------------------------------------------------- out of memory

CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB memory in "
    "use."
)
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"
)
ALLOCATED = {
    "cuda": r"\(tried to allocate 2.00 GiB; 1.06 GiB free of 79.19 " r"GiB\)",
    "cpu": r"\(tried to allocate 4,096 MiB\)",
}
SMALLER_BATCH = (
    r"lower --batch-size and raise --grad-accum by the same factor \(the same "
    r"sequences per optimizer step: "
    r"the same run; --resume takes the pair too\); the files saved before are kept"
)


def run_out_of_memory(monkeypatch, cls, kind: str, when) -> None:
    """cls.forward raises what torch raises when memory runs out (kind "cuda":
    torch.cuda.OutOfMemoryError; "cpu": the CPU allocator's RuntimeError) at the calls for which
    when(module, args, kwargs) holds."""
    real = cls.forward

    def forward(self, *args, **kwargs):
        if when(self, args, kwargs):
            raise torch.cuda.OutOfMemoryError(CUDA_OOM) if kind == "cuda" else RuntimeError(CPU_OOM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", forward)


def one_error_line(capsys, main, argv) -> str:
    code = quiet_cli(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
@pytest.mark.parametrize("phase", ["step", "evaluation"])
def test_out_of_memory_in_training_names_the_flags_and_keeps_the_saved_checkpoint(
    phase, kind, worlds, tmp_path, monkeypatch, capsys
):
    import model

    out = tmp_path / "out"
    argv = [
        *NO_SAMPLES,
        "--preset",
        "smoke",
        "--data-dir",
        str(worlds["train"] / "data"),
        "--out-dir",
        str(out),
        "--max-iters",
        "6",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    # The 3rd training forward is step 3's, after the evaluation at step 2 saved; the 3rd evaluation
    # forward is the one at step 2 (each evaluation scores train, then validation), after step 0's
    # saved.
    training_mode, seen = phase == "step", [0]

    def third_in_this_mode(module, args, kwargs) -> bool:
        seen[0] += module.training == training_mode
        return module.training == training_mode and seen[0] == 3

    run_out_of_memory(monkeypatch, model.GPT, kind, third_in_this_mode)
    line = one_error_line(capsys, training.main, argv)
    what = "in a training step" if training_mode else "in an evaluation"
    assert re.fullmatch(
        rf"error: out of {'GPU' if kind == 'cuda' else 'CPU'} memory {what} "
        rf"{ALLOCATED[kind]}: "
        rf"{SMALLER_BATCH}",
        line,
    ), line
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert saved["step"] == (2 if training_mode else 0)
    assert (
        sorted(p.name for p in out.iterdir() if p.name.endswith(LEFTOVER) or p.name == LOCK_NAME)
        == []
    )
    # the way out: the same run, half the micro-batch, twice the accumulation
    if training_mode and kind == "cuda":
        monkeypatch.undo()
        assert (
            quiet_cli(
                training.main,
                [
                    "--resume",
                    "--out-dir",
                    str(out),
                    "--batch-size",
                    "1",
                    "--grad-accum",
                    "2",
                    "--no-progress",
                ],
            )
            == 0
        )
        assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 6


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
def test_out_of_memory_in_evaluate_and_model_usage_names_the_flag(
    kind, worlds, monkeypatch, capsys
):
    import model

    use = worlds["use"]
    checkpoint = str(use / "out" / "best_model_params.pt")
    memory = "GPU" if kind == "cuda" else "CPU"
    # scoring calls the model's forward
    run_out_of_memory(monkeypatch, model.GPT, kind, lambda m, a, k: True)
    line = one_error_line(
        capsys,
        evaluate.main,
        ["--checkpoint", checkpoint, "--data-dir", str(use / "data"), "--quiet"],
    )
    assert re.fullmatch(
        rf"error: out of {memory} memory scoring {ALLOCATED[kind]}: lower "
        r"--batch-size \(windows per "
        r"forward pass\)",
        line,
    ), line
    monkeypatch.undo()
    run_out_of_memory(
        monkeypatch, model.Block, kind, lambda m, a, k: (a[1:] or [k.get("cache")])[0] is not None
    )
    line = one_error_line(
        capsys,
        evaluate.main,
        [
            "--checkpoint",
            checkpoint,
            "--data-dir",
            str(use / "data"),
            "--quiet",
            # generation only: it keeps a cache
            "--num-samples",
            "1",
        ],
    )
    assert re.fullmatch(
        rf"error: out of {memory} memory generating {ALLOCATED[kind]}: "
        r"lower --max-new-tokens \(the "
        r"context the model attends over, and its cache, grow with each new "
        r"token\)",
        line,
    ), line
    monkeypatch.undo()
    # model_usage only generates
    run_out_of_memory(monkeypatch, model.Block, kind, lambda m, a, k: True)
    line = one_error_line(capsys, model_usage.main, ["--checkpoint", checkpoint, "--seed", "1"])
    assert re.fullmatch(
        rf"error: out of {memory} memory generating {ALLOCATED[kind]}: "
        r"lower --max-new-tokens or "
        r"shorten the prompt \(the context the model attends over, and its "
        r"cache, grow with each new "
        r"token\)",
        line,
    ), line


def test_an_error_that_is_not_out_of_memory_is_not_disguised_as_one():
    from slm.cli import out_of_memory

    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(ValueError("x")) is None
    assert out_of_memory(MemoryError()) == "CPU memory"
    assert out_of_memory(RuntimeError(CPU_OOM)) == "CPU memory"
    assert out_of_memory(RuntimeError("CUDA error: out of memory")) == "GPU memory"
    try:
        try:
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        except RuntimeError as e:
            raise RuntimeError("wrapped by a library") from e
    except RuntimeError as e:
        assert out_of_memory(e) == "GPU memory"


# ----------------------------------------------------------------------------- preempted under
# torchrun

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.slow  # three launches of the run: up to a minute and a half on 2 cores
@pytest.mark.parametrize(
    "processes",
    [1, pytest.param(2, marks=pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun"))],
)
def test_sigterm_saves_and_the_printed_command_resumes_to_the_uninterrupted_weights(
    processes, tiny_data_dir, tmp_path
):
    """SIGTERM to what the user started (python, or the torchrun launcher, which tells both
    workers): ckpt.pt is saved, the last line says how to continue (under torchrun: torchrun with
    as many processes), and that very command ends with the weights of a run that was never
    stopped, bit for bit."""
    from test_training import wait_for_log_step

    common = [
        *NO_SAMPLES,
        "--no-progress",
        "--preset",
        "smoke",
        "--data-dir",
        str(tiny_data_dir),
        "--max-iters",
        "40",
        "--eval-interval",
        "8",
        "--eval-iters",
        "1",
        "--warmup-iters",
        "2",
        "--batch-size",
        "2",
        "--dropout",
        "0",
    ]
    launch = (
        [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", "training.py"]
        if processes > 1
        else [sys.executable, "training.py"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(
        [*launch, *common, "--out-dir", str(tmp_path / "straight")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stdout + straight.stderr

    out = tmp_path / "preempted"
    proc = subprocess.Popen(
        [*launch, *common, "--out-dir", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_log_step(proc, out / "log.csv", 8, timeout=180)
    proc.send_signal(signal.SIGTERM)  # as a scheduler preempting the job does
    stdout, stderr = proc.communicate(timeout=180)
    stopped = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 8 <= stopped < 40, "the run finished before the signal landed"
    hint = re.search(r"\(SIGTERM\): saved \S+; continue with: (.+)$", stdout, re.MULTILINE)
    assert hint, stdout + stderr
    expected = (
        f"torchrun --standalone --nproc_per_node={processes} training.py"
        if processes > 1
        else "python training.py"
    )
    assert hint.group(1) == f"{expected} --out-dir {out} --resume"
    # rank 0 speaks; the other saves nothing and says nothing
    assert stdout.count("continue with:") == 1

    command = hint.group(1).split()
    resumed = subprocess.run(
        [launch[0], *command[1:], "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {out / 'ckpt.pt'} at step {stopped}" in resumed.stdout
    assert f"{processes} process(es)" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(out / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), (
        "not the uninterrupted run's weights"
    )


def test_the_resume_command_is_the_launch_command(monkeypatch):
    from slm.distributed import launch_command

    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch_command() == "python training.py"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert launch_command() == "torchrun --standalone --nproc_per_node=4 training.py"
    # 4 nodes of 4: the rendezvous is the user's, on every node
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert (
        launch_command()
        == "torchrun --nnodes=4 --nproc_per_node=4 --rdzv-endpoint=HOST:PORT training.py"
    )
