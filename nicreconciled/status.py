"""Per-NIC state under state_dir: written by the daemon, read by ``status``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    last_error: str | None = None
    last_error_at: str | None = None
    #: Other tools' configurations for this NIC (one line each, see conflicts.py).
    conflicts: list[str] = field(default_factory=list)


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
