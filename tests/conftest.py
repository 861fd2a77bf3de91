"""Shared test fixtures. Tests are hermetic: no network, CPU only, everything written under
tmp_path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A real TinyStories sample in the dataset's raw .txt format, beside the checkout when present.
SHARED_TINYSTORIES = REPO.parent / "shared" / "data" / "tinystories"

# Never let a test reach the network, even on a machine that has it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_tinystories() -> Path:
    """The directory of the real sample's train.txt / validation.txt; skips the test when absent."""
    if not (SHARED_TINYSTORIES / "train.txt").is_file():
        pytest.skip(f"real TinyStories sample not found at {SHARED_TINYSTORIES}")
    return SHARED_TINYSTORIES


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A data directory with raw/, train.bin, validation.bin and meta.json from a slice of the
    bundled real TinyStories sample (its first 300 train stories and the same share of
    validation: small, so quick)."""
    import load_dataset
    import tokenization

    data_dir = tmp_path_factory.mktemp("data")
    load_dataset.prepare(source="sample", data_dir=data_dir, num_stories=300)
    tokenization.tokenize(data_dir, num_proc=1)
    return data_dir


def fake_free_space(monkeypatch, free: int) -> None:
    """Make every file system report `free` bytes free (shutil.disk_usage is what slm/files.py
    asks).
    """
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def no_space(*args, **kwargs):
    """A write that fails as a full disk does."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def lock_holder():
    """start(directory) runs a separate process that takes slm.files.dir_lock(directory) and holds
    it until killed (with fork_child=True it also forks a child that sleeps); every process is
    killed afterwards."""
    procs: list[subprocess.Popen] = []
    children: list[int] = []

    def start(directory, fork_child: bool = False) -> subprocess.Popen:
        code = (
            "import os, sys, time, slm.files\nlock = "
            "slm.files.dir_lock(sys.argv[1])\nlock.__enter__()\nready_r, ready_w = "
            "os.pipe()\nchild = os.fork() if sys.argv[2] == '1' else -1\n"
            # fork() returns in the child after its at-fork hooks ran (the inherited lock is
            # closed): it says so before the parent reports, or the test could race that closing
            # on a busy machine
            "if child == 0:\n    os.write(ready_w, b'x')\n    time.sleep(120)\n    "
            "os._exit(0)\nif child > 0:\n    os.read(ready_r, 1)\nprint('locked', child, "
            "flush=True)\ntime.sleep(120)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(directory), "1" if fork_child else "0"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        word, child = proc.stdout.readline().split()
        assert word == "locked"
        if int(child) > 0:
            children.append(int(child))
            proc.child_pid = int(child)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
