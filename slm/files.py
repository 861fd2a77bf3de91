"""Writing files on a user's disk: atomic writes, one-line errors for a full, read-only or failing
disk, a free-space check before long work, and one writer per directory.

What a user's machine does to writes: the disk fills, a directory is read-only or not ours, a
disk fails, two runs write into one directory. Every write goes through atomic_write (a file),
atomic_write_files (several files that belong together) or write_errors (a directory such as
DATA/raw, with replace_together swapping it in), so each of these is one CLIError line that names
the file, the space it needed and had, and the fix, with the previous version still in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slm.cli import CLIError

# check_free_space asks for 10% more than an estimate, plus SPACE_SLACK: estimates are rough
SPACE_MARGIN = 0.10
SPACE_SLACK = 1 << 20
# DIR/.lock: locked by the one process writing into DIR, removed when it is done
LOCK_NAME = ".lock"
LOCK_WAIT_S = 0.5  # how long a second writer tries before it is refused
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
    """Bytes an unprivileged process may still write on the file system that holds (or will hold)
    path.
    """
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
                    # the innermost (and, of equals, the latest) mount
                    if best is None or len(mount) >= len(best[1]):
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


def check_free_space(
    directory: str | os.PathLike, needed: int, what: str, flag: str = "--out-dir"
) -> None:
    """Refuse, in one line, to start work whose output will not fit (needed: an estimate, in
    bytes)."""
    free = free_bytes(directory)
    wanted = needed * (1 + SPACE_MARGIN) + SPACE_SLACK
    if free < wanted:
        raise CLIError(
            f"not enough space in {directory} for {what}: about {human_bytes(needed)} needed "
            f"({human_bytes(wanted)} with a margin), {human_bytes(free)} free on "
            f"{filesystem(directory)}; free space or pass another {flag} (nothing was started)"
        )


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError with an errno behind e (e itself, or what it was raised from): libraries wrap
    them.
    """
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
    """Whether e comes from the disk refusing a write (full, over quota, read-only): never the
    input's fault.
    """
    os_error = _os_error_in(e)
    return os_error is not None and os_error.errno in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", -1),
        errno.EROFS,
    )


def write_error(
    e: BaseException, path: str | os.PathLike, needed: int | None = None, flag: str = "--out-dir"
) -> CLIError | None:
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
        # an estimate below what is free now was too low: the failed write took all there was
        need = (
            f"about {human_bytes(needed)}"
            if needed and needed > free
            else f"more than {human_bytes(free)}"
        )
        need += " needed, "
        msg = (
            f"{trouble} writing {path} ({need}{human_bytes(free)} free on "
            f"{filesystem(path.parent)}); free space or pass another {flag}"
        )
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"{trouble} writing {path}; make {path.parent} writable or pass another {flag}"
    elif code == errno.EROFS:
        msg = (
            f"{trouble} writing {path} ({filesystem(path.parent)}); pass another {flag} on a "
            "writable disk"
        )
    elif code == errno.EIO:
        msg = (
            f"{trouble} writing {path} on {filesystem(path.parent)} (the disk may be failing: see "
            f"dmesg); pass another {flag}"
        )
    else:
        msg = f"could not write {path} ({os.strerror(code)}); pass another {flag}"
    return CLIError(f"{msg}; {kept}")


class WriteTarget:
    """What a write_errors block is writing: its path and its expected size, which the block may
    refine.
    """

    def __init__(self, path: str | os.PathLike, needed: int | None):
        self.path, self.needed = Path(path), needed


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, needed: int | None = None, flag: str = "--out-dir"):
    """Inside, an OS error (disk full, read-only, permission, I/O) becomes write_error's one-line
    CLIError.

    The block must clean up its temporary files itself (try/finally inside), so the free space
    reported is what the user has after the failure."""
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


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], None],
    needed: int | None = None,
    flag: str = "--out-dir",
) -> None:
    """Call write(tmp_path), then rename tmp over path: readers see the old file or the new one,
    never half.

    On failure the temporary file is removed, the old file stays, and an OS error is one CLIError
    line (needed: the expected size in bytes, for that line; flag: the option that picks the
    directory)."""
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def replace_together(moves: list[tuple[Path, Path]]) -> None:
    """Rename each (new, path) pair's new over path, all or none: every old version is first moved
    aside (PATH.old), then each new one renamed in, in order; when a rename fails, the new ones
    already in place are removed and every old version is put back before the error goes on.
    Files or directories.

    At no moment does a path hold a mix: it holds its old version, nothing, or its new version
    (so a file that describes the others, like tokenization's meta.json, goes last). A crash
    mid-way can leave PATH.old behind, and a path missing; the next call for the same paths
    removes the leftovers."""
    aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for _, path in moves:
            old = path.with_name(path.name + ".old")
            _remove(old)
            if os.path.lexists(path):
                os.replace(path, old)
                aside.append((path, old))
        for new, path in moves:
            os.replace(new, path)
            placed.append(path)
    except BaseException:
        for path in reversed(placed):
            with contextlib.suppress(OSError):
                _remove(path)
        for path, old in reversed(aside):
            with contextlib.suppress(OSError):
                os.replace(old, path)
        raise
    for _, old in aside:
        with contextlib.suppress(OSError):
            _remove(old)


def atomic_write_files(
    directory: str | os.PathLike, files: dict[str, bytes], flag: str = "--out-dir"
) -> None:
    """Write several files into directory as one whole: each beside its old version (NAME.tmp), then
    all renamed in together (replace_together), so a failure anywhere leaves every old file as it
    was, and an OS error is one CLIError line."""
    directory = Path(directory)
    needed = space_to_replace(directory, {name: len(data) for name, data in files.items()})
    tmps: list[Path] = []
    with write_errors(directory, needed, flag) as target:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                target.path = directory / name
                tmps.append(directory / (name + ".tmp"))
                tmps[-1].write_bytes(data)
            target.path = directory
            replace_together(
                [(tmp, directory / name) for tmp, name in zip(tmps, files, strict=True)]
            )
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)


def saved_bytes(obj: Any) -> int:
    """About how many bytes torch.save writes for obj: each tensor storage once, plus a little per
    entry.
    """
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
        # a Python file: its OSError (errno) stays behind torch's RuntimeError
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, save, needed=saved_bytes(obj), flag=flag)


def space_to_replace(directory: str | os.PathLike, sizes: dict[str, int]) -> int:
    """Free bytes needed to atomic_write these files into directory one after another, in this
    order: each new file is written beside its old version, which is freed once the new one is
    renamed over it."""
    peak = grown = 0
    for name, size in sizes.items():
        peak = max(peak, grown + size)
        old = Path(directory) / name
        grown += size - (old.stat().st_size if old.is_file() else 0)
    return peak


# ----------------------------------------------------------------------------- one writer per
# directory
#
# filelock takes the OS's own lock on DIR/.lock (flock on Unix, msvcrt on Windows): the OS drops it
# when its holder dies, even by SIGKILL, and filelock closes it in forked children (tokenization's
# workers), so a file left behind never blocks the next run.


def _write_holder(fd: int) -> None:
    """Put "PID command" in the held lock file, for whoever finds the directory locked; best effort
    (see dir_lock).
    """
    command = (
        " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    )
    command = command if len(command) <= 300 else command[:297] + "..."
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no half line naming a wrong pid


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:  # gone, or unreadable while locked (Windows)
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"pid {pid}: {command}" if command else f"pid {pid}"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, flag: str = "--out-dir"):
    """Be the one process writing into directory (created if missing) while the block runs.

    A second writer gets one CLIError line naming the directory and the process that holds it.
    Readers take no lock: they only open files renamed into place.

    The lock file's "PID command" line is advice for a human: when the disk refuses even that
    line (0 bytes free, an I/O error), the lock still holds and the run goes on without it; a
    second writer is then told "another process" holds the directory, and the disk's trouble is
    said in one line where the run writes (or, before it starts, by its free-space check)."""
    import filelock

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise CLIError(
            f"{flag} {d} is a file, not a directory; pass a directory (it is created if missing)"
        )
    created = not d.exists()
    path = d / LOCK_NAME
    # a short wait, not none: a lock file its last holder removes as we open it is retried
    lock = filelock.FileLock(path, timeout=LOCK_WAIT_S, on_acquired=_write_holder)
    try:
        with write_errors(d, flag=flag):
            d.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise CLIError(
                    f"another run is writing into {d} ({_lock_holder(path)}); wait for it to "
                    f"finish or stop it, or pass another {flag}"
                ) from None
        try:
            yield
        finally:
            # removed while still held, so a waiter never locks a file that is gone (filelock
            # sees it unlinked and retries); Windows cannot, and filelock removes it on release
            with contextlib.suppress(OSError):
                path.unlink()
            lock.release()
    finally:
        if created:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: a run that wrote nothing leaves no directory behind
