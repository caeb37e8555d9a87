"""Atomic file writes, for checkpoints (:mod:`aiva_cy.io`) and ONNX models
(:mod:`aiva_cy.onnx_export`): readers see the old file or the new one, never half of one.

The bytes go to a temporary file beside the target, are flushed and fsynced, and the file is
renamed over the target; then the directory is fsynced so that the rename itself survives a
crash.  A symlink is written through to its target, a file the user may not write is never
replaced, and every OSError names the target, not the temporary file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write"]

# Temporary files are named ".aiva_cy-save-<pid>-<random>.tmp" beside the target: short,
# so that any legal target name still fits, and recognisable, so that those of a process
# that died mid-save (kill -9) can be removed by a later save in the same directory.
_TMP_PREFIX = ".aiva_cy-save-"
_TMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    # Linux reports the umask without changing it; elsewhere set-and-restore is the only way.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temps(directory: str) -> None:
    """Remove our temp files whose writing process no longer exists (best effort)."""
    try:
        names = [n for n in os.listdir(directory)
                 if n.startswith(_TMP_PREFIX) and n.endswith(_TMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        pid_text = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue                       # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except (PermissionError, OSError, OverflowError):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def check_resolved_suffix(path: str, what: str) -> None:
    """Refuse a path whose name has the right suffix but which resolves (through symlinks)
    to a file of another kind: the suffix guards look at what would be overwritten, not
    only at the link's name (model.onnx -> checkpoint.npz must not replace the checkpoint)."""
    name_suffix = os.path.splitext(path)[1].lower()
    resolved = os.path.realpath(path)
    target_suffix = os.path.splitext(resolved)[1].lower()
    if target_suffix != name_suffix:
        raise ValueError(f"'{path}' resolves to '{resolved}', which is not {what} (its suffix "
                         f"is {target_suffix or '(none)'!r}, not {name_suffix!r}): refusing to "
                         f"overwrite it")


def _save_target(path: str, what: str) -> str:
    """Where the bytes go: through a symlink to its target (what np.save and torch.save
    users expect), and never over a file this user may not write."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.exists(target):
        if os.path.isdir(target):
            raise IsADirectoryError(errno.EISDIR, f"is a directory: cannot save {what} "
                                    f"over it", path)
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "no permission to write this file (save "
                                  "replaces it by a rename, which would bypass that)", path)
    return target


def atomic_write(path: str, write: Callable[[IO[bytes]], None], what: str = "the checkpoint"
                 ) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``'s target, then
    rename it over the target.  An OSError names ``path`` (and says it was ``what`` that
    could not be saved), not the temporary file; any error leaves no temporary file and
    the old file, if any, as it was."""
    target = _save_target(path, what)
    directory = os.path.dirname(os.path.abspath(target))
    _remove_stale_temps(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_TMP_PREFIX}{os.getpid()}-",
                                   suffix=_TMP_SUFFIX)
    except OSError as exc:
        raise _named(exc, path, what) from exc
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        try:
            mode = os.stat(target).st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_current_umask()
        with contextlib.suppress(OSError, AttributeError):   # no fchmod on Windows
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1                      # the file object owns the descriptor now
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path, what) from exc
        raise
    # Make the rename itself durable; best effort (directories cannot be opened on Windows).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _named(exc: OSError, path: str, what: str) -> OSError:
    """The same kind of OSError, naming the target's path instead of a temp file."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"cannot save {what}: {exc.strerror}", path)
