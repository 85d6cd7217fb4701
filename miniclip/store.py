"""Where miniclip's files live, and how they are written: the one place for cache roots, locks and atomic
writes.

- `weights_dir()`: downloaded weights. `cache_dir()`: files miniclip computes (zero-shot
  classifiers). Both under `$MINICLIP_HOME` when it is set.
- `file_lock`: one process at a time for work that two processes must not do at once on the same files
  (building an index in one folder, downloading one file). Advisory locks (`flock`) on a small lock file:
  the kernel releases them when the holder exits, even when it is killed, so a crash never leaves a stale
  lock (only, then, the empty lock file, which the next run reuses). The holder deletes the file when it is
  done; a process that locked a file which was deleted meanwhile notices (another inode at the path) and
  starts over, so two processes never both hold "the" lock.
- `atomic_writer` / `atomic_write_bytes`: readers see the old file or the complete new one, never a partial
  write; the temporary file has a fresh random name, created exclusively, so two writers never share one and
  a symlink planted in its place is never followed.
- `open_regular_file`: open a file for reading only if it is a regular file: a FIFO or a device given a
  file's name (`photo.png`, `/dev/zero`) would block or never end.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from .errors import Locked

try:
    import fcntl
except ImportError:  # Windows: no flock; such runs are not locked against each other (README Limitations)
    fcntl = None

HOME_ENV = "MINICLIP_HOME"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "miniclip"


def weights_dir() -> Path:
    """Where downloaded weights live: `$MINICLIP_HOME` if set; else the `weights/` folder of a source checkout
    (the folder beside the `miniclip` package that holds miniclip's weights/README.md) when it is writable;
    else the user cache directory, `$XDG_CACHE_HOME/miniclip` or `~/.cache/miniclip`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    return _checkout_weights_dir() or _user_cache()


def _checkout_weights_dir() -> Path | None:
    # An installed package sits in site-packages, whose parent has no weights/README.md: only a checkout does.
    weights = Path(__file__).resolve().parents[1] / "weights"
    return weights if (weights / "README.md").is_file() and os.access(weights, os.W_OK) else None


def cache_dir() -> Path:
    """Where miniclip keeps files it computes: `$MINICLIP_HOME/cache`, else `$XDG_CACHE_HOME/miniclip`, else
    `~/.cache/miniclip`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "cache"
    return _user_cache()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file whose content becomes ``path`` when the ``with`` block ends without error, so that
    readers see either the old file or the complete new one, never a partial write: a temporary file in the
    same directory, fsynced, then ``os.replace``d (an atomic rename on POSIX and Windows). On an error the
    temporary file is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh random name opened with "x" (O_CREAT | O_EXCL): two writers never share a temporary file, and
    # a symlink planted at the name makes the open fail instead of being followed. Unlike tempfile.mkstemp's
    # private 0600 files, the result gets the permissions the user's umask gives any new file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")  # see temporary_target
    f = open(tmp, "xb")  # noqa: SIM115  (closed below, before the rename)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # ours: created above
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_writer`)."""
    atomic_write(path, [data])


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> None:
    """`atomic_write_bytes` for data given in pieces (e.g. the tensors of a checkpoint), never joined in memory."""
    with atomic_writer(path) as f:
        for chunk in chunks:
            f.write(chunk)


_TEMPORARY = re.compile(r"\.(.+)\.[0-9]+\.[0-9a-f]{16}\.tmp")


def temporary_target(name: str) -> str | None:
    """The name of the file that `name` was the temporary file of, if `name` is one atomic_write_bytes makes
    (`.<name>.<pid>.<random>.tmp`), else None. Such a file stays behind only when its writer was killed."""
    match = _TEMPORARY.fullmatch(name)
    return match.group(1) if match else None


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of a float32 .npy file (for atomic_write_bytes)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) for the `with` block. If another process holds
    it: wait=False raises `Locked` at once; wait=True calls `on_wait(holder pid)` and blocks until it is
    free."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    waited = False
    while True:
        f = open(path, "a+", encoding="ascii")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                if not wait:
                    raise Locked(path, holder) from None
                if on_wait is not None and not waited:
                    on_wait(holder)
                waited = True
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder deleted the file we locked: lock the one at the path now
                continue
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # while still holding it: see the module docstring
            return
        finally:
            f.close()  # closing releases the lock


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular_file(path: str | os.PathLike) -> io.BufferedReader:
    """Open `path` for reading in binary mode, but only if it is a regular file (symlinks followed).

    Opening a FIFO blocks until a writer appears and reading a device such as /dev/zero never ends, so a
    file name alone (`photo.png`, `embeddings-....npy`) is not trusted: the path is checked with `stat`
    before it is opened (a FIFO or device is never opened), then opened with O_NONBLOCK (a FIFO put there
    meanwhile cannot block the open) and checked again on the open descriptor. Raises FileNotFoundError or
    another OSError; one that is not a regular file gives an OSError whose message says what it is."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{_kind(mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # no effect on a regular file's reads; restored for tidiness
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
