"""A lab-only cloud whose metadata is a file of NicStates, so the daemon gets local routes.

No simulated cloud of the lab delivers local routes yet (EC2 has none; GCE's alias ranges
come with the GCE source and its simulator). This source hands the daemon exactly the states
a test writes to ``[lrlab] endpoint`` (a JSON file: MAC -> ``NicState`` fields), so the real
daemon renders, applies, watches and heals them on the real stack. It is registered in the
daemon's process only (``local_daemon.py``), never in the product's registry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from nicreconciled.config import Config, Section
from nicreconciled.errors import FetchError
from nicreconciled.model import COMMON_FLAG_KINDS, NicState, Observation, RedFlag, normalize_mac
from nicreconciled.sources.http import HttpClient

NAME = "lrlab"


class LocalConfig(Section):
    #: The JSON file of states (the lab's daemon configuration calls it the endpoint).
    endpoint: str = ""


class LocalSource:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[Section]] = LocalConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    ONE_ANSWER: ClassVar[bool] = True
    detect_error: str = ""

    def __init__(self, path: Path) -> None:
        self._path = path

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> LocalSource:
        return cls(Path(config.section(LocalConfig).endpoint))

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        return None

    async def detect(self) -> bool:
        return self._path.exists()

    def _document(self) -> dict[str, dict[str, object]]:
        try:
            text = self._path.read_text()
        except OSError as exc:
            raise FetchError(f"{self._path}: {exc.strerror}") from exc
        loaded: dict[str, dict[str, object]] = json.loads(text)
        return {normalize_mac(mac): fields for mac, fields in loaded.items()}

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        fields = self._document().get(mac)
        if fields is None:
            flag = RedFlag("not-listed", "MAC not in the file", (str(self._path),), "unlisted")
            return Observation(mac, None, (flag,))
        return Observation(mac, NicState.model_validate({**fields, "mac": mac, "cloud": NAME}))

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        text = json.dumps(self._document(), sort_keys=True)
        return dict.fromkeys(keys, text)

    async def close(self) -> None:
        return None
