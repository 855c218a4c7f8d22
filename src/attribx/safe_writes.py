"""Writing a user's output file safely, whatever its format: where the write goes (a link's target; never
a FIFO or device), the temporary file beside it for an atomic replace (umask permissions), one writer per
file (a lock of our own: HDF5's file locking is often off on NFS and HPC), and room on the disk. HDF5 files
(:mod:`attribx.storage`), text and image outputs (:mod:`attribx.textviz`, :mod:`attribx.render`) and graph
files (:meth:`attribx.graph.Graph.save`) all write through these."""
from __future__ import annotations

import os
import secrets
import stat

from .errors import StorageError


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def write_target(path) -> str:
    """The file a write to ``path`` goes to: ``path`` itself, or, where ``path`` is a symbolic link, the
    file it points to (resolved fully), so that the atomic replace updates the link's target and the link
    stays. Raises :class:`StorageError` (one line) when that is a folder or exists as anything but a regular
    file (a FIFO, a device such as ``/dev/full``, a socket): replacing it would remove the node (as root, a
    device file) and writing into it is no file write."""
    path = os.fspath(path)
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target            # a new file (a missing or non-folder parent is reported by the write)
    except OSError as err:
        raise StorageError(f"{path}: cannot write there: {err.strerror or err}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StorageError(f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
        via = f" (through the link to {target})" if target != os.path.abspath(path) else ""
        raise StorageError(f"{path}: is {kind}{via}, not a regular file; refused: attribx writes its results "
                           "to regular files only, choose a file path")
    return target


def temp_file_beside(path: str) -> str:
    """A new empty file beside ``path`` (hidden, random name) for an atomic write, created with mode 0o666
    so that the umask decides its permissions as for any file a tool writes; where ``path`` exists, the
    temporary file takes its mode (replacing a file keeps its permissions)."""
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise StorageError(f"{path}: cannot write there: {err.strerror or err}") from None
        os.close(fd)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except OSError:
            pass                                # no earlier file (or not ours): the umask's mode stays
        return tmp
    raise StorageError(f"{path}: cannot create a temporary file in {directory}")


def check_writable(path) -> None:
    """Raise :class:`StorageError` unless a file can be written at ``path``: its folder exists and takes a new
    file (every write goes through a temporary file beside it), and ``path`` is no folder. Commands call it
    before they compute, so that a typo in ``-o`` does not cost the computation."""
    path = os.fspath(path)
    target = write_target(path)     # a folder, FIFO, device or socket: refused; a link: its target
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        why = (f"the folder {folder} does not exist" if os.path.isdir(existing) else
               f"{existing} is a file, not a folder")
        raise StorageError(f"{path}: cannot write there: {why}")
    os.unlink(temp_file_beside(target))


# --------------------------------------------------------------------------------------------------
# one writer per file: a lock of our own (HDF5's file locking is often off: NFS, HPC)
# --------------------------------------------------------------------------------------------------

_HELD: dict = {}            # lock file -> [fd, depth]: this process's locks (re-entered, not taken twice)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELD.clear)   # a forked child holds none of its parent's runs


def lock_path(path) -> str:
    """The lock file of an output: ``.<name>.lock`` beside the file written (a link's target)."""
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    return os.path.join(directory, f".{base}.lock")


def _lock_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def being_written(path, pid: str, advice: str = "wait for it or write elsewhere") -> str:
    return f"{os.fspath(path)}: is being written by another attribx run (pid {pid}); {advice}"


def acquire_lock(path) -> str | None:
    """Take the exclusive writer lock of ``path`` (``fcntl.flock`` on :func:`lock_path`, held until
    :func:`release_lock`; the OS releases it when the process dies, so a killed run leaves no stale lock).
    Raises :class:`StorageError` when another process holds it. Re-entrant within a process. Returns the
    lock file (None where locks are not available or the folder does not exist)."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover - Windows
        return None
    lp = lock_path(path)
    if lp in _HELD:
        _HELD[lp][1] += 1
        return lp
    for _ in range(20):
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        except (FileNotFoundError, NotADirectoryError):
            return None          # no folder: the write itself says so
        except OSError as err:
            raise StorageError(f"{os.fspath(path)}: cannot write there: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _lock_pid(fd)
            os.close(fd)
            raise StorageError(being_written(path, pid)) from None
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if not same:             # the lock file was removed by the run that released it: take the new one
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:
            pass
        _HELD[lp] = [fd, 1]
        return lp
    raise StorageError(f"{os.fspath(path)}: cannot take the writer lock {lp}")


def release_lock(lp: str | None) -> None:
    """Release a lock :func:`acquire_lock` returned (its lock file is removed while still held)."""
    entry = _HELD.get(lp) if lp is not None else None
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[lp]
    try:
        os.unlink(lp)
    except OSError:
        pass
    os.close(entry[0])


class writer_lock:
    """``with writer_lock(path):`` holds the writer lock of ``path`` for the block (:func:`acquire_lock`)."""

    def __init__(self, path):
        self.path = path
        self.lp = None

    def __enter__(self):
        self.lp = acquire_lock(self.path)
        return self

    def __exit__(self, *exc):
        release_lock(self.lp)
        self.lp = None


def writer_pid(path) -> str | None:
    """The pid of the attribx run writing ``path`` now (``"unknown"`` if it did not say), or None."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover
        return None
    lp = lock_path(path)
    if lp in _HELD:
        return None           # this process writes it: not another run
    try:
        fd = os.open(lp, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _lock_pid(fd)
        return None
    finally:
        os.close(fd)


def check_space(path: str, nbytes: int) -> None:
    """Refuse (:class:`StorageError`) a write of about ``nbytes`` that the file system of ``path`` has no room
    for, before anything is written: HDF5 cannot close a file whose metadata it failed to write (a full disk)
    and may crash the process when it tries again at exit."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):
        return
    if st.f_blocks == 0:
        return          # a file system that reports no size (some FUSE and network mounts): nothing to check
    free = st.f_bavail * st.f_frsize
    need = int(nbytes * 1.1) + 64 * 1024
    if free < need:
        raise StorageError(f"{path}: no space left on the device for the next write (needs about {need} bytes, "
                           f"{free} free); nothing of it was written")
