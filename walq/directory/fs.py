"""The file-system seam: every file-system call walq makes goes through here.

`OsFileSystem` is the real one. Tests substitute a file system that forgets
unsynced writes, tears them, or fails fsync (`walq.testing.faultfs`), so the
crash model in docs/FORMAT.md can be exercised without pulling a power cord.
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import pwd
import stat
import sys
from typing import Protocol

import attrs

from walq.errors import CorruptionError, UnsafeDirectoryError


class File(Protocol):
    """An open file addressed by offset; writes are positional, never appends."""

    path: str

    def pread(self, size: int, offset: int) -> bytes:
        """Read up to `size` bytes at `offset` (fewer at end of file)."""
        ...

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write all of `data` at `offset` (reaches the kernel, not the disk)."""
        ...

    def sync(self) -> None:
        """Make the file's data and size durable (fdatasync; F_FULLFSYNC on macOS)."""
        ...

    def truncate(self, size: int) -> None:
        """Set the file's size."""
        ...

    def size(self) -> int:
        """The file's current size in bytes."""
        ...

    def close(self) -> None:
        """Release the handle; unsynced data stays in the kernel's cache."""
        ...


class Lock(Protocol):
    """An exclusive owner lock on a queue directory."""

    def release(self) -> None:
        """Give the lock up."""
        ...


@attrs.frozen
class Stat:
    """What `FileSystem.stat` tells of a name: its kind, owner and permission bits."""

    kind: str  # "dir", "file", "link" (a symbolic link) or "other"
    uid: int
    gid: int
    mode: int  # the permission bits, e.g. 0o700


class FileSystem(Protocol):
    """The narrow set of file-system operations walq needs."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        """Open the regular file `path`; `create` makes a new one (mode 0600), failing if it exists.

        A symbolic link or anything but a regular file at `path` is never
        opened: CorruptionError naming it (walq makes no links in a queue).
        """
        ...

    def exists(self, path: str) -> bool:
        """Whether `path` names an existing entry (a dangling symbolic link counts)."""
        ...

    def stat(self, path: str, *, follow: bool = False) -> Stat:
        """The kind, owner and mode of `path` (of a link itself unless `follow`)."""
        ...

    def is_dir(self, path: str) -> bool:
        """Whether `path` names an existing directory."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names in directory `path`, sorted."""
        ...

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create `path` and missing parents with `mode` (durable once the parent is synced)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace `dst` with `src` (durable once the directory is synced)."""
        ...

    def remove(self, path: str) -> None:
        """Unlink a file (durable once the directory is synced)."""
        ...

    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory `path` durable."""
        ...

    def free_bytes(self, path: str) -> int:
        """Bytes available to unprivileged writers on the file system holding `path`."""
        ...

    def lock(self, path: str, timeout: float) -> Lock:
        """Take the exclusive lock file `path`, waiting up to `timeout` seconds."""
        ...


class OsFile:
    """A real file descriptor."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        _datasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def file_size(fs: FileSystem, path: str) -> int:
    """The size of the file at `path` (OSError if it cannot be opened)."""
    f = fs.open(path)
    try:
        return f.size()
    finally:
        f.close()


def _datasync(fd: int) -> None:
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        # fsync on macOS only reaches the drive's cache; F_FULLFSYNC reaches the platter.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


def open_fd(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open for walq's own files: never through a symbolic link, only a regular file.

    CorruptionError names a link or a non-regular file at `path` (O_NONBLOCK
    keeps a FIFO planted there from blocking the open). A file that root
    creates (O_CREAT) in a directory owned by another user is given to that
    user, so that the queue's owner can open it next time.
    """
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptionError(path, 0, NOT_A_FILE.format("a symbolic link")) from None
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # as a write-open of it would say
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptionError(path, 0, NOT_A_FILE.format("not a regular file"))
        if flags & os.O_CREAT:
            give_to_dir_owner(path, fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


NOT_A_FILE = "{} where walq keeps its own file (walq makes no links; move it away)"


def give_to_dir_owner(path: str, *, fd: int | None = None) -> None:
    """Running as root, give `path` (or the open `fd`) the owner of the directory holding it.

    An administrative command run as root (`walq compact`) must not leave
    files the queue's owner cannot open. Does nothing for other users: their
    files are theirs already (the directory is checked to be theirs).
    """
    if os.geteuid() != 0:
        return
    parent = os.stat(posixpath.dirname(posixpath.normpath(path)) or ".")
    st = os.fstat(fd) if fd is not None else os.lstat(path)
    if (st.st_uid, st.st_gid) != (parent.st_uid, parent.st_gid):
        if fd is not None:
            os.fchown(fd, parent.st_uid, parent.st_gid)
        else:
            os.lchown(path, parent.st_uid, parent.st_gid)


# -- who may own and write a queue directory (docs/OPERATIONS.md, "Permissions") --------------


def queue_dir_owner(fs: FileSystem, path: str, *, trust: bool = False) -> int | None:
    """Check the queue directory `path`; the uid that walq's files in it must have.

    The directory must be owned by the caller (root may administer any
    user's queue) and writable by its owner alone: whoever else can write it
    can plant links, spool jobs the owner runs, or take the lock. `trust`
    (Queue.open's trust_dir) accepts any owner and mode; then None is
    returned and nothing inside is checked for its owner either -- links are
    refused all the same.
    """
    st = fs.stat(path, follow=True)  # the path itself may be a link to the real directory
    if trust:
        return None
    me = os.geteuid()
    if me not in (st.uid, 0):  # root may administer any user's queue
        raise UnsafeDirectoryError(
            f"{path}: owned by {_user(st.uid)}, not by you ({_user(me)}): walq refuses a "
            "queue directory another user controls (trust_dir=True accepts it)"
        )
    _check_mode(path, st, "queue directory")
    return st.uid


def own_dir(fs: FileSystem, path: str, uid: int | None, *, create: bool) -> bool:
    """Check walq's subdirectory `path` (spool/, cut/), making it if `create`; whether it exists.

    It must be a real directory (a link is CorruptionError), owned by `uid`
    (None: not checked) and writable by that owner alone.
    """
    try:
        st = fs.stat(path)
    except FileNotFoundError:
        if not create:
            return False
        fs.makedirs(path, 0o700)
        fs.sync_dir(posixpath.dirname(posixpath.normpath(path)) or ".")
        st = fs.stat(path)
    if st.kind != "dir":
        what = "a symbolic link" if st.kind == "link" else "not a directory"
        raise CorruptionError(path, 0, f"{what} where walq keeps its own directory (move it away)")
    if uid is not None:
        if st.uid != uid:
            raise UnsafeDirectoryError(
                f"{path}: owned by {_user(st.uid)}, not by the queue's owner ({_user(uid)})"
            )
        _check_mode(path, st, "directory")
    return True


def check_owner(fs: FileSystem, path: str, uid: int | None) -> None:
    """UnsafeDirectoryError unless `path` (not followed) belongs to `uid` (None: anyone)."""
    if uid is None:
        return
    st = fs.stat(path)
    if st.uid != uid:
        raise UnsafeDirectoryError(
            f"{path}: owned by {_user(st.uid)}, not by the queue's owner ({_user(uid)})"
        )


def _check_mode(path: str, st: Stat, what: str) -> None:
    if st.mode & 0o022:
        raise UnsafeDirectoryError(
            f"{path}: mode {st.mode:04o} lets other users write into the {what} "
            f"(chmod go-w, or trust_dir=True to accept it)"
        )


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        flags = os.O_RDWR if write or create else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return OsFile(path, open_fd(path, flags))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def stat(self, path: str, *, follow: bool = False) -> Stat:
        st = os.stat(path) if follow else os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            kind = "dir"
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
        elif stat.S_ISLNK(st.st_mode):
            kind = "link"
        else:
            kind = "other"
        return Stat(kind, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        path = posixpath.normpath(path)
        if os.path.isdir(path):
            return
        parent = posixpath.dirname(path)
        if parent and not os.path.lexists(parent):  # a file there: mkdir says ENOTDIR
            self.makedirs(parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            return
        give_to_dir_owner(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        except OSError as exc:  # pragma: no cover - some file systems refuse dir fsync
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(fd)

    def free_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def lock(self, path: str, timeout: float) -> Lock:
        from walq.directory.lock import ProcessLock  # noqa: PLC0415 - walq.directory.lock opens through open_fd

        return ProcessLock.acquire(path, timeout)
