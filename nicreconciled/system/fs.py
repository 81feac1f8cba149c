"""Files under output_dir and state_dir: atomic, 0600, write-if-changed, no symlinks followed.

Everything goes through a directory file descriptor and O_NOFOLLOW, so an entry swapped for a
symlink is refused rather than followed, and a reader of the directory sees either the old or
the new file, never a torn one (temp file in the same directory, fsync, rename, fsync dir).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from nicreconciled.errors import UnsafePathError

#: Temporary files end in .tmp: neither netplan (*.yaml) nor NetworkManager reads them.
TMP_SUFFIX = ".tmp"
_TOKEN = re.compile(r"[0-9a-f]{8}")


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise UnsafePathError(f"refusing file name {name!r}")


@contextlib.contextmanager
def _open_dir(directory: Path, create: bool) -> Iterator[int]:
    if create:
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        except FileExistsError:
            # Something that is not a directory is in its place: say so ("File exists" is
            # what mkdir says, and it reads as if all were well).
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
            ) from None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _read_at(dfd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{name} is a symlink; refusing to follow or replace it"
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{name} is not a regular file; refusing to replace it")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_file(directory: Path, name: str) -> str | None:
    """Content of directory/name, None if absent; UnsafePathError for a symlink or non-file."""
    _check_name(name)
    try:
        with _open_dir(directory, create=False) as dfd:
            data = _read_at(dfd, name)
    except FileNotFoundError:
        return None
    return None if data is None else data.decode("utf-8", errors="replace")


def describe(exc: OSError, directory: Path, name: str) -> str:
    """``PATH: reason`` for a failed write or removal of DIRECTORY/NAME (logs, status): the
    path the system named when it is absolute (a directory that cannot be made or opened),
    else DIRECTORY/NAME itself, never the random name of its temp file (the same failure
    reads the same at every retry)."""
    named = exc.filename
    where = named if isinstance(named, str) and os.path.isabs(named) else str(directory / name)
    return f"{where}: {exc.strerror or exc}"


def temp_name(name: str) -> str:
    """The temporary name NAME is written under before it is renamed into place."""
    return f"{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def write_if_changed(
    directory: Path, name: str, text: str, mode: int = 0o600, *, create: bool = True
) -> bool:
    """Atomically make directory/name hold TEXT with MODE; True if anything changed.
    CREATE: make DIRECTORY (and its parents) if missing, else FileNotFoundError."""
    _check_name(name)
    data = text.encode("utf-8")
    with _open_dir(directory, create=create) as dfd:
        current = _read_at(dfd, name)
        if current == data:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_IMODE(st.st_mode) == mode:
                return False
            # Same content, wrong mode: rewrite rather than chmod a path that could be
            # swapped for a symlink between the check and the call.
        tmp = temp_name(name)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dfd,
        )
        try:
            try:
                os.fchmod(fd, mode)  # the umask may have cut bits off
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
        return True


def remove_file(directory: Path, name: str) -> bool:
    """Remove directory/name if it is a regular file; True if something was removed."""
    _check_name(name)
    try:
        with _open_dir(directory, create=False) as dfd:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"{name} is not a regular file; refusing to remove it")
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)
            return True
    except FileNotFoundError:
        return False


def list_names(directory: Path, prefix: str, suffix: str) -> list[str]:
    """Names in DIRECTORY that start with PREFIX and end with SUFFIX, sorted."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(prefix) and n.endswith(suffix))


def remove_stale_temps(directory: Path, owned: re.Pattern[str]) -> int:
    """Temp files a killed writer left behind: only temp names of files OWNED matches.

    A name is ours only if it is exactly ``temp_name(owned file)``: an operator's
    ``90-nicreconciled-notes.tmp`` is not.
    """
    removed = 0
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in sorted(entries):
        base, dot, rest = name.rpartition(".")  # strip ".tmp"
        stem, _, token = base.rpartition(".")
        if dot and "." + rest == TMP_SUFFIX and _TOKEN.fullmatch(token) and owned.fullmatch(stem):
            with contextlib.suppress(FileNotFoundError, UnsafePathError):
                removed += remove_file(directory, name)
    return removed
