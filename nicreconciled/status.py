"""Per-NIC state under state_dir: written by the daemon, read by ``status``.

The phase and ``managed`` values are enums shared by the daemon (STATUS=), the status files
and the command line; their string values are what the JSON holds (stable, documented in the
README). A status file that is not what we wrote (a symlink, a directory, garbage) is never
followed and never fatal: reading skips it, writing moves it out of the way first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from pydantic import TypeAdapter, ValidationError

from nicreconciled.errors import UnsafePathError
from nicreconciled.model import key_to_mac, mac_to_key, normalize_mac
from nicreconciled.system import fs

log = structlog.get_logger(__name__)

#: At start, the status file of a MAC that is neither attached nor has our output file is
#: deleted once it is older than this (by mtime; a file changes whenever the NIC's status
#: does). Younger ones are looked at once more (the metadata decides whether it is gone).
PRUNE_AFTER = 24 * 3600.0


class NicPhase(StrEnum):
    """Where a NIC is; each phase falls in exactly one STATUS= bucket (see ``bucket``)."""

    #: Polling until stable (no state accepted in this episode yet).
    CONVERGING = "converging"
    #: Nothing left to do: written (and loaded) with every red flag cleared, or decided
    #: not to be ours (``managed`` says why).
    CONVERGED = "converged"
    #: Accepted and written, a red flag (late IPv6) still watched.
    WAITING = "waiting"
    #: Never stable: the latest state was used after ``polling.deadline``.
    DEADLINE = "deadline"
    #: Not converged and an error recorded: the write, the apply or the fetch failed and is
    #: retried with backoff (``last_error`` says why).
    FAILING = "failing"
    #: Gone from the machine and from the metadata; its file removed. The status file is
    #: deleted right after, so this is seen only in passing.
    REMOVED = "removed"
    #: Applied, and the kernel lacks some of it, and nothing heals it: the heal limit was
    #: reached (until SIGHUP or a metadata change), or ``kernel.heal = false``.
    #: ``kernel_missing`` says what is missing.
    DRIFTING = "drifting"


class Managed(StrEnum):
    """Whether we write a file for the NIC, or why not (``managed_detail`` says more)."""

    PENDING = "pending"  # not decided yet: no state accepted in this run
    MANAGED = "managed"  # our file is written for it
    UNLISTED = "unlisted"  # the metadata does not list the MAC: not ours
    PRIMARY = "primary"  # the primary NIC, and manage_primary = false
    FOREIGN = "foreign"  # udev gives it to another manager (ID_NET_MANAGED_BY, NM_UNMANAGED)
    EXCLUDED = "excluded"  # interfaces.exclude_macs / interfaces.exclude_device_numbers
    REMOVED = "removed"  # gone here and upstream; its file removed


class DaemonPhase(StrEnum):
    DETECTING = "detecting"  # the cloud is not known yet (cloud = "auto")
    RUNNING = "running"


class Bucket(StrEnum):
    """The STATUS= counts: every NIC is in exactly one."""

    CONVERGED = "converged"
    WAITING = "waiting"
    FAILING = "failing"


#: Values written by earlier versions, when ``managed`` was free text.
_LEGACY_MANAGED = {
    "unknown to metadata": (Managed.UNLISTED, "the metadata does not list this MAC"),
    "primary (manage_primary = false)": (Managed.PRIMARY, "manage_primary = false"),
}


@dataclass
class NicStatus:
    mac: str
    ifname: str | None = None
    file: str | None = None
    phase: NicPhase = NicPhase.CONVERGING
    managed: Managed = Managed.PENDING
    #: Why it is (not) managed, for people: "manage_primary = false", "exclude_macs",
    #: "ID_NET_MANAGED_BY=org.freedesktop.NetworkManager", ...
    managed_detail: str | None = None
    waiting_on: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    rendered_fingerprint: str | None = None
    last_change: str | None = None
    #: Digests of the file content last written and last loaded into the network stack
    #: (``apply``), and the boot the load happened in: a file written but not applied (a
    #: failed apply, a stop in the middle of one) is applied after a restart.
    written: str | None = None
    applied: str | None = None
    applied_boot: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    #: Other tools' configurations for this NIC (one line each, see conflicts.py).
    conflicts: list[str] = field(default_factory=list)
    #: What the applied configuration promises in the kernel (``promise.Promise.to_json``),
    #: None until it is applied; ``check`` compares it with the kernel.
    promise: dict[str, Any] | None = None
    #: What of the promise the kernel lacked at the last look ([] = all there).
    kernel_missing: list[str] = field(default_factory=list)
    #: Heals of this NIC since the daemon started, and when the last one was.
    heals: int = 0
    last_heal: str | None = None

    @property
    def apply_pending(self) -> bool:
        """Written (or removed) but not loaded into the network stack yet."""
        return self.written != self.applied

    @property
    def managed_text(self) -> str:
        """``managed``, with the reason when there is one: ``excluded: exclude_macs``."""
        return f"{self.managed}: {self.managed_detail}" if self.managed_detail else self.managed


@dataclass
class DaemonStatus:
    """The daemon as a whole: ``detecting`` (the cloud is not known yet) or ``running``."""

    phase: DaemonPhase
    detail: str
    cloud: str | None = None


def bucket(status: NicStatus) -> Bucket:
    """The STATUS= count a NIC falls in, from its phase alone."""
    if status.phase in (NicPhase.CONVERGED, NicPhase.REMOVED):
        return Bucket.CONVERGED
    if status.phase in (NicPhase.FAILING, NicPhase.DRIFTING):
        return Bucket.FAILING
    return Bucket.WAITING


def summary(rows: Iterable[NicStatus]) -> str:
    """The one-line summary: STATUS= sends it, ``status`` prints it from the files.

    ``3 NICs (2 managed): 2 converged, 1 waiting, 0 failing``; converged + waiting + failing
    = NICs (waiting counts converging, waiting and deadline; failing counts drifting).
    Removed NICs are not counted.
    """
    live = [r for r in rows if r.phase is not NicPhase.REMOVED]
    counts = dict.fromkeys(Bucket, 0)
    for row in live:
        counts[bucket(row)] += 1
    managed = sum(r.managed is Managed.MANAGED for r in live)
    return (
        f"{len(live)} NICs ({managed} managed): {counts[Bucket.CONVERGED]} converged, "
        f"{counts[Bucket.WAITING]} waiting, {counts[Bucket.FAILING]} failing"
    )


_NIC = TypeAdapter(NicStatus)
_DAEMON = TypeAdapter(DaemonStatus)
_DAEMON_FILE = "daemon.json"
_OWNED = re.compile(r"[0-9a-f]{12}\.json")


def _to_json(status: NicStatus | DaemonStatus) -> str:
    return json.dumps(asdict(status), indent=2, sort_keys=True) + "\n"


def parse_nic(text: str) -> NicStatus:
    """A status file's content; ValueError for anything we did not write."""
    data: Any = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    managed = data.get("managed")
    legacy = _LEGACY_MANAGED.get(managed) if isinstance(managed, str) else None
    if legacy is not None:
        data = {**data, "managed": legacy[0], "managed_detail": legacy[1]}
    try:
        status = _NIC.validate_python(data)
    except ValidationError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    status.mac = normalize_mac(status.mac)
    return status


def _found(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def _evict(directory: Path, name: str) -> dict[str, str]:
    """Take the entry NAME that is not a regular file out of the way; what was done.

    Through a directory fd and never following anything: a symlink is unlinked itself, a
    special file unlinked, an empty directory removed, a non-empty one renamed aside (its
    contents are not ours to delete).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return {"found": "nothing"}
        found = _found(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            return {"found": "file"}  # replaced by the write itself
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)
            os.fsync(fd)
            return {"found": found}
        try:
            os.rmdir(name, dir_fd=fd)
            os.fsync(fd)
            return {"found": found}
        except OSError:
            aside = f"{name}.displaced-{secrets.token_hex(4)}"
            os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
            return {"found": found, "moved_to": aside}
    finally:
        os.close(fd)


def _hostile(directory: Path, name: str) -> bool:
    """Something other than a regular file is at directory/name (never followed)."""
    try:
        return not stat.S_ISREG(os.stat(directory / name, follow_symlinks=False).st_mode)
    except OSError:
        return False


class StatusWriteError(OSError):
    """A status file could not be written or removed. Its text (``str()`` and ``strerror``)
    names the path and the reason: ``/var/lib/nicreconciled/nics: Not a directory``."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _failed(exc: OSError | UnsafePathError, directory: Path, name: str) -> StatusWriteError:
    if isinstance(exc, OSError):
        return StatusWriteError(exc.errno, fs.describe(exc, directory, name))
    return StatusWriteError(None, f"{directory / name}: {exc}")


def _write(directory: Path, name: str, text: str, mac: str | None) -> bool:
    """write_if_changed, replacing an entry that is not a regular file (logged); any other
    failure (EROFS, ENOSPC, a file in place of the directory) is a StatusWriteError."""
    try:
        try:
            return fs.write_if_changed(directory, name, text, 0o644)
        except (UnsafePathError, OSError) as exc:
            # A symlink or a directory is refused (UnsafePathError), a socket cannot even
            # be opened (ENXIO): either way, not what we wrote. Other errors rise.
            if not _hostile(directory, name):
                raise
            done = _evict(directory, name)
            log.warning("status_file_replaced", mac=mac, file=name, reason=str(exc), **done)
            return fs.write_if_changed(directory, name, text, 0o644)
    except (UnsafePathError, OSError) as exc:
        raise _failed(exc, directory, name) from exc


class StatusStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "nics"

    def sweep(self) -> int:
        """Remove temp files a killed writer left among the status files."""
        try:
            return fs.remove_stale_temps(self.directory, _OWNED)
        except NotADirectoryError:
            return 0  # a file in its place holds no temp files; every write says what is wrong

    def save(self, status: NicStatus) -> bool:
        """Write STATUS (if changed); an entry that is not a regular file is replaced.

        Raises StatusWriteError (an OSError naming the path) only when the write itself
        fails (also if someone keeps planting entries); callers log it and go on.
        """
        name = f"{mac_to_key(status.mac)}.json"
        return _write(self.directory, name, _to_json(status), status.mac)

    def delete(self, mac: str) -> bool:
        """Remove MAC's status file (whatever is there); True if something was removed."""
        name = f"{mac_to_key(mac)}.json"
        try:
            try:
                return fs.remove_file(self.directory, name)
            except UnsafePathError:
                done = _evict(self.directory, name)
                log.warning("status_file_replaced", mac=mac, file=name, **done)
                return True
        except OSError as exc:
            raise _failed(exc, self.directory, name) from exc

    def save_daemon(self, status: DaemonStatus) -> bool:
        return _write(self.directory.parent, _DAEMON_FILE, _to_json(status), None)

    def load_daemon(self) -> DaemonStatus | None:
        try:
            text = fs.read_file(self.directory.parent, _DAEMON_FILE)
            return None if text is None else _DAEMON.validate_json(text)
        except (OSError, ValueError, UnsafePathError):
            return None

    def load(self, mac: str) -> NicStatus | None:
        """The status saved for MAC by an earlier run, if any and readable."""
        try:
            text = fs.read_file(self.directory, f"{mac_to_key(mac)}.json")
            status = None if text is None else parse_nic(text)
        except (OSError, ValueError, UnsafePathError):
            return None
        return status if status is not None and status.mac == normalize_mac(mac) else None

    def names(self) -> list[str]:
        """The names of the status files (``<mac key>.json``), whatever they are."""
        try:
            return [n for n in fs.list_names(self.directory, "", ".json") if _OWNED.fullmatch(n)]
        except OSError:
            return []

    def load_all(self) -> list[NicStatus]:
        """Every readable status file whose content names its own MAC; the rest skipped."""
        out = []
        for name in self.names():
            try:
                text = fs.read_file(self.directory, name)
                if text is None:
                    continue
                status = parse_nic(text)
            except (OSError, ValueError, UnsafePathError):
                continue
            if f"{mac_to_key(status.mac)}.json" == name:
                out.append(status)
        return out

    def ages(self, now: float | None = None) -> Iterator[tuple[str, float]]:
        """(MAC, seconds since its status file last changed) for every status file."""
        now = time.time() if now is None else now
        for name in self.names():
            with contextlib.suppress(OSError):
                st = os.stat(self.directory / name, follow_symlinks=False)
                yield key_to_mac(name.removesuffix(".json")), now - st.st_mtime
