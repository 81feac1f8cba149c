"""Per-NIC state under state_dir: written by the daemon, read by ``status``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nicreconciled.errors import UnsafePathError
from nicreconciled.model import mac_to_key
from nicreconciled.system import fs


@dataclass
class NicStatus:
    mac: str
    ifname: str | None = None
    file: str | None = None
    #: converging | converged | waiting (accepted, watching red flags) | deadline | removed
    phase: str = "converging"
    managed: str = "pending"
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

    @property
    def apply_pending(self) -> bool:
        """Written (or removed) but not loaded into the network stack yet."""
        return self.written != self.applied


@dataclass
class DaemonStatus:
    """The daemon as a whole: ``detecting`` (the cloud is not known yet) or ``running``."""

    phase: str
    detail: str
    cloud: str | None = None


_DAEMON_FILE = "daemon.json"
_OWNED = re.compile(r"[0-9a-f]{12}\.json")


class StatusStore:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "nics"

    def sweep(self) -> int:
        """Remove temp files a killed writer left among the status files."""
        return fs.remove_stale_temps(self.directory, _OWNED)

    def save(self, status: NicStatus) -> bool:
        text = json.dumps(asdict(status), indent=2, sort_keys=True) + "\n"
        return fs.write_if_changed(self.directory, f"{mac_to_key(status.mac)}.json", text, 0o644)

    def save_daemon(self, status: DaemonStatus) -> bool:
        text = json.dumps(asdict(status), indent=2, sort_keys=True) + "\n"
        return fs.write_if_changed(self.directory.parent, _DAEMON_FILE, text, 0o644)

    def load_daemon(self) -> DaemonStatus | None:
        try:
            text = fs.read_file(self.directory.parent, _DAEMON_FILE)
            return None if text is None else DaemonStatus(**json.loads(text))
        except (OSError, ValueError, TypeError, UnsafePathError):
            return None

    def load(self, mac: str) -> NicStatus | None:
        """The status saved for MAC by an earlier run, if any and readable."""
        try:
            text = fs.read_file(self.directory, f"{mac_to_key(mac)}.json")
            return None if text is None else NicStatus(**json.loads(text))
        except (OSError, ValueError, TypeError, UnsafePathError):
            return None

    def load_all(self) -> list[NicStatus]:
        out = []
        for name in fs.list_names(self.directory, "", ".json"):
            text = fs.read_file(self.directory, name)
            if text is None:
                continue
            try:
                out.append(NicStatus(**json.loads(text)))
            except (ValueError, TypeError):
                continue
        return out
