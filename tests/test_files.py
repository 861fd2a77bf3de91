"""slm/files.py's writing helpers under the faults a user's machine produces: a full disk, a
read-only or failing one, and two runs writing into one directory (a second process refused; a
killed holder, or a child it forked, never blocking the next run)."""

from __future__ import annotations

import errno
import os
import re
import signal

import pytest
import torch
from conftest import fake_free_space

from slm import checkpoint, files
from slm.cli import CLIError
from slm.files import atomic_torch_save, atomic_write, dir_lock

SIZE = r"[\d.]+ (B|KiB|MiB|GiB)"


def fails_half_way(code: int):
    """A write function that writes half of its file, then fails with OSError(code)."""

    def write(tmp):
        tmp.write_bytes(b"n" * 5000)
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize(
    "code, pattern",
    [
        (
            errno.ENOSPC,
            rf"no space left on device writing {{f}} \(about {SIZE} needed, {SIZE} "
            r"free on .+\); "
            r"free space or pass another --out-dir; the previous f.bin is intact",
        ),
        (
            errno.EDQUOT,
            rf"disk quota exceeded writing {{f}} \(about {SIZE} needed, {SIZE} free " r"on .+\); ",
        ),
        (
            errno.EACCES,
            r"permission denied writing {f}; make {d} writable or pass another "
            r"--out-dir; the previous",
        ),
        (
            errno.EROFS,
            r"read-only file system writing {f} \(.+\); pass another --out-dir on a "
            r"writable disk; the prev",
        ),
        (
            errno.EIO,
            r"I/O error writing {f} on .+ \(the disk may be failing: see dmesg\); pass "
            r"another --out-dir; the",
        ),
        (
            errno.ENAMETOOLONG,
            r"could not write {f} \(File name too long\); pass another " r"--out-dir; the previous",
        ),
    ],
)
def test_a_failed_write_is_one_line_and_keeps_the_previous_file(
    tmp_path, monkeypatch, code, pattern
):
    f = tmp_path / "f.bin"
    f.write_bytes(b"old contents")
    fake_free_space(monkeypatch, 4000)
    with pytest.raises(CLIError) as e:
        atomic_write(f, fails_half_way(code), needed=10_000)
    assert re.match(
        pattern.format(f=re.escape(str(f)), d=re.escape(str(tmp_path))), str(e.value)
    ), str(e.value)
    assert "\n" not in str(e.value)
    assert f.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_first_write_says_nothing_was_left(tmp_path):
    with pytest.raises(CLIError, match=r"; no partial new.bin was left$"):
        atomic_write(tmp_path / "new.bin", fails_half_way(errno.ENOSPC))
    assert os.listdir(tmp_path) == []


def test_an_estimate_below_the_free_space_is_not_shown(tmp_path, monkeypatch):
    # the write used up all of it, so it needed more than that
    fake_free_space(monkeypatch, 5 << 20)
    with pytest.raises(
        CLIError,
        match=r"^no space left on device writing .* \(more than " r"5.0 MiB needed, 5.0 MiB free ",
    ):
        atomic_write(tmp_path / "f.bin", fails_half_way(errno.ENOSPC), needed=1000)


def test_errors_that_are_not_the_disks_pass_through(tmp_path):
    def bug(tmp):
        raise ValueError("a bug, not a disk")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "f", bug, needed=10)
    assert os.listdir(tmp_path) == []


def torch_save_on_a_full_disk(obj, f, *args, **kwargs):
    """torch.save as it fails on a full disk: its writer's OSError becomes the context of a
    RuntimeError."""
    f.write(b"PK" * 100)
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:  # raised while handling it, as torch does: the OSError is its __context__
        raise RuntimeError(  # noqa: B904 (no "from", as in torch: the OSError is no __cause__)
            "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
        )


def test_torch_save_on_a_full_disk_names_the_file_and_the_space(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    state = {"w": torch.zeros(1000)}
    atomic_torch_save(state, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    fake_free_space(monkeypatch, 1234)
    # 8.4 KiB: the tensor's 4,000 bytes and the file's frame
    needed = files.human_bytes(files.saved_bytes(state))
    with pytest.raises(
        CLIError,
        match=r"^no space left on device writing "
        rf"{re.escape(str(path))} \(about {needed} "
        r"needed, 1.2 KiB free on .+\); free space or pass "
        r"another --out-dir; "
        r"the previous ckpt.pt is intact$",
    ):
        atomic_torch_save(state, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_library_error_without_errno_is_a_full_disk_only_when_the_disk_is_too_small(
    tmp_path, monkeypatch
):
    # torch.save given a path, not a file: no OSError behind it
    def hides_errno(obj, f, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 6464 vs 6358"
        )

    monkeypatch.setattr(torch, "save", hides_errno)
    # plenty of space: a real bug, shown as it is
    with pytest.raises(RuntimeError, match="enforce fail"):
        atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "a.pt")
    fake_free_space(monkeypatch, 100)
    with pytest.raises(CLIError, match="^no space left on device writing .*a.pt .*100 B free"):
        atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == []


def test_check_free_space_refuses_with_the_numbers(tmp_path, monkeypatch):
    files.check_free_space(tmp_path, 1000, "the thing")  # a real disk has a few KB free
    fake_free_space(monkeypatch, 5 << 20)
    with pytest.raises(
        CLIError,
        match=rf"^not enough space in {re.escape(str(tmp_path))} "
        r"for the thing: about "
        r"20 MiB needed \(23 MiB with a margin\), 5.0 MiB "
        r"free on .+; free space or "
        r"pass another --out-dir \(nothing was started\)$",
    ):
        files.check_free_space(tmp_path, 20 << 20, "the thing")


def test_space_to_replace_counts_the_old_files_freed_by_each_rename(tmp_path):
    # nothing there yet: both files
    assert files.space_to_replace(tmp_path, {"a": 100, "b": 300}) == 400
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "b").write_bytes(b"x" * 300)
    # only one new file beside its old one
    assert files.space_to_replace(tmp_path, {"a": 100, "b": 300}) == 300
    assert files.space_to_replace(tmp_path, {"a": 150, "b": 300}) == 350


def test_checkpoint_size_estimate_is_close_to_what_torch_saves(tmp_path):
    from config import GPTConfig
    from model import GPT

    model = GPT(GPTConfig(vocab_size=500, block_size=32, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(model.optim_groups(0.1), lr=1e-3)
    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    loss.backward()
    opt.step()  # AdamW's moments exist only after a step
    torch.save(model.state_dict(), tmp_path / "best.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    best, ckpt = checkpoint.checkpoint_sizes(model)
    actual_best, actual_ckpt = (
        (tmp_path / "best.pt").stat().st_size,
        (tmp_path / "ckpt.pt").stat().st_size,
    )
    assert actual_best <= best <= actual_best * 1.1 + 65536
    assert actual_ckpt <= ckpt <= actual_ckpt * 1.1 + 300_000


# ----------------------------------------------------------------------------- one writer per
# directory


def test_a_second_writer_is_refused_naming_the_directory_and_the_holder(tmp_path, lock_holder):
    holder = lock_holder(tmp_path)
    with pytest.raises(
        CLIError,
        match=r"^another run is writing into "
        rf"{re.escape(str(tmp_path))} \(pid "
        rf"{holder.pid}: -c {re.escape(str(tmp_path))} 0\); "
        r"wait for it to finish "
        r"or stop it, or pass another --out-dir$",
    ):
        with dir_lock(tmp_path):
            pass


def test_a_lock_left_by_a_sigkilled_process_does_not_block(tmp_path, lock_holder):
    holder = lock_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / files.LOCK_NAME).exists()  # the file stays; the kernel dropped the lock
    with dir_lock(tmp_path):
        assert (tmp_path / files.LOCK_NAME).read_text().startswith(f"{os.getpid()} ")
    assert os.listdir(tmp_path) == []


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path, lock_holder):
    holder = lock_holder(tmp_path, fork_child=True)  # as tokenization's worker processes are forked
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    os.kill(holder.child_pid, 0)  # the child still runs
    with dir_lock(tmp_path):
        pass


def test_the_lock_creates_the_directory_and_leaves_nothing_when_nothing_was_written(tmp_path):
    with dir_lock(tmp_path / "new" / "out"):
        assert os.listdir(tmp_path / "new" / "out") == [files.LOCK_NAME]
    assert os.listdir(tmp_path / "new") == []
    with dir_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "file").write_text("x")
    assert os.listdir(tmp_path / "kept") == ["file"]
    with dir_lock(tmp_path):  # one process may lock again once it let go
        pass


def test_the_lock_refuses_a_file_and_a_read_only_directory(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CLIError, match="--data-dir .*f is a file, not a directory"):
        with dir_lock(tmp_path / "f", "--data-dir"):
            pass
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(files.LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        CLIError, match=r"^read-only file system writing " rf"{re.escape(str(tmp_path))} "
    ):
        with dir_lock(tmp_path):
            pass


def test_a_lock_whose_pid_line_cannot_be_written_still_holds(tmp_path, monkeypatch):
    real_write = os.write

    # the disk has 0 bytes free: the PID line is refused, the lock itself is not
    def full_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(files.LOCK_NAME):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with dir_lock(tmp_path):  # the run goes on
        assert (tmp_path / files.LOCK_NAME).read_bytes() == b""  # no half line naming a wrong pid
        with pytest.raises(CLIError, match=r"another run is writing into .* \(another process\)"):
            with dir_lock(tmp_path):  # a second writer is still refused (flock: another open file)
                pass
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])
def test_replace_together_is_all_or_nothing(tmp_path, monkeypatch, fail_at):
    """Three files (one a directory), the second new: whichever rename fails, every old one is put
    back.
    """
    (tmp_path / "a").write_text("old a")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "inside").write_text("old c")
    for name in "ab":
        (tmp_path / f"{name}.tmp").write_text(f"new {name}")
    (tmp_path / "c.tmp").mkdir()
    (tmp_path / "c.tmp" / "inside").write_text("new c")
    moves = [(tmp_path / f"{name}.tmp", tmp_path / name) for name in "abc"]
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        files.replace_together(moves)  # 2 old versions moved aside, then 3 renames in: calls 1-5
    assert (tmp_path / "a").read_text() == "old a" and (
        tmp_path / "c" / "inside"
    ).read_text() == "old c"
    assert not (tmp_path / "b").exists() and not any(
        p.name.endswith(".old") for p in tmp_path.iterdir()
    )
    monkeypatch.undo()
    for name in "ab":  # the caller's new files are where they were (it removes them)
        (tmp_path / f"{name}.tmp").write_text(f"new {name}")
    if not (tmp_path / "c.tmp").exists():
        (tmp_path / "c.tmp").mkdir()
        (tmp_path / "c.tmp" / "inside").write_text("new c")
    files.replace_together(moves)
    assert [(tmp_path / n).read_text() for n in "ab"] == ["new a", "new b"]
    assert (tmp_path / "c" / "inside").read_text() == "new c"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
