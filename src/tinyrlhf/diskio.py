"""Writing files so that a full disk, a read-only directory or a quota is one clear line, not a traceback,
and no temporary file is left behind.

Every writer of the package (data files, checkpoints, the final model, eval results, `feedback export`,
the loop's state) writes to a temporary name, fsyncs and renames. When the write fails, `disk_errors`
removes what it was writing and raises `DiskError` (a TinyRLHFError: the CLI prints one `error:` line
and exits 2) naming the file and the reason. torch reports a failed `torch.save` as a RuntimeError
("PytorchStreamWriter failed writing file ...", "unexpected pos ..."), not an OSError: it counts too.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil

from .errors import TinyRLHFError

# what torch's zip writer says when the file under it refuses bytes (caffe2 inline_container.cc)
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos",
                         "No space left on device", "Read-only file system")
_HINTS = {errno.ENOSPC: "no space left on the device: free some space and run the same command again",
          errno.EDQUOT: "disk quota exceeded: free some space and run the same command again",
          errno.EROFS: "the file system is read-only: write somewhere else",
          errno.EACCES: "permission denied: write somewhere else or fix the permissions",
          errno.EPERM: "operation not permitted: write somewhere else or fix the permissions",
          errno.EISDIR: "it is a directory", errno.ENOTDIR: "a part of the path is a file, not a directory"}


class DiskError(TinyRLHFError):
    """A file could not be written (no space, read-only, permissions...); what was being written is removed."""


def is_disk_error(e: BaseException) -> bool:
    """An OSError, or the RuntimeError torch raises when the file under torch.save refuses its bytes."""
    if isinstance(e, OSError):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE_FAILURES)


def reason(e: BaseException) -> str:
    """The cause of a disk error in a few words (errno's hint, else the first line of the message)."""
    if isinstance(e, OSError):
        return _HINTS.get(e.errno, e.strerror or str(e) or type(e).__name__)
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"torch could not write it ({text[:160]}; is the disk full?)"


def remove_quietly(path: str) -> None:
    """Remove a file or directory tree if it exists; never raises (cleanup after a failed write)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except OSError:
        pass


@contextlib.contextmanager
def disk_errors(what: str, path: str, cleanup=(), after: str = ""):
    """Inside the block, a disk error becomes DiskError("{what} {path}: {reason}[; {after}]") (a DiskError
    raised inside gets `after` added); on any failure, disk error or not, the paths in `cleanup` (temporary
    files or directories) are removed."""
    try:
        yield
    except BaseException as e:
        for p in cleanup:
            remove_quietly(p)
        if isinstance(e, DiskError) and after:
            raise DiskError(f"{e}; {after}") from None
        if isinstance(e, DiskError) or not is_disk_error(e):
            raise
        raise DiskError(f"{what} {path}: {reason(e)}" + (f"; {after}" if after else "")) from None


def fsync_dir(path: str) -> None:
    """Make the directory entries (renames, new files) in `path` durable."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write, *, binary: bool = False, tmp: str | None = None, what: str = "cannot write",
                 after: str = "") -> None:
    """Replace `path` with what write(f) writes, so a crash or a failed write leaves the old file or the new
    one, never a mix: a temporary sibling (default `path.tmpPID`), fsync, rename, fsync of the directory.
    A disk error is a DiskError naming `path`, with the temporary file removed."""
    tmp = tmp or f"{path}.tmp{os.getpid()}"
    if os.path.isdir(path):
        raise DiskError(f"{what} {path}: it is a directory")
    with disk_errors(what, path, cleanup=[tmp], after=after):
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path))


def write_text(path: str, text: str, **kw) -> None:
    """atomic_write of a text."""
    atomic_write(path, lambda f: f.write(text), **kw)


def make_dirs(path: str, what: str = "cannot create the directory") -> None:
    """os.makedirs(path, exist_ok=True), with a DiskError naming the directory when it cannot be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise DiskError(f"{what} {path}: it is a file, not a directory")
    with disk_errors(what, path):
        os.makedirs(path, exist_ok=True)
