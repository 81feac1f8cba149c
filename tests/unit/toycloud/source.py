"""A fifth cloud in one file, for test_registry: what a contributor writes, and nothing more.

Its metadata is a JSON object {mac: "address/prefix"} at ``{endpoint}/nics``; the instance's
primary is the first entry. It shows the whole contract: a table of its own, its flag kinds,
its numbering, a DMI check, and a document shared by every NIC.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface
from pathlib import Path
from typing import ClassVar

from pydantic import field_validator

from nicreconciled.config import Config, Section, check_endpoint
from nicreconciled.errors import FetchError
from nicreconciled.model import COMMON_FLAG_KINDS, Observation, RedFlag, normalize_mac
from nicreconciled.sources.common import SharedAnswer, make_state, parse_json, scalar
from nicreconciled.sources.http import HttpClient
from nicreconciled.system import sysfs

DOCUMENT = "nics"


class ToyConfig(Section):
    endpoint: str = "http://192.0.2.1"
    _endpoint = field_validator("endpoint")(check_endpoint)


class ToySource:
    name: ClassVar[str] = "toy"
    Settings: ClassVar[type[Section]] = ToyConfig
    FLAG_KINDS: ClassVar[frozenset[str]] = COMMON_FLAG_KINDS
    ONE_ANSWER: ClassVar[bool] = False
    detect_error: str = "not detected"

    def __init__(self, config: ToyConfig, http: HttpClient) -> None:
        self._url = f"{config.endpoint}/{DOCUMENT}"
        self._http = http
        self._document = SharedAnswer(self._load, ttl=0.5)

    @classmethod
    def from_config(cls, config: Config, http: HttpClient) -> ToySource:
        return cls(config.section(ToyConfig), http)

    @staticmethod
    def dmi_says(sys_root: Path) -> bool | None:
        return True if sysfs.dmi("sys_vendor", sys_root) == "Toy Cloud" else None

    async def _load(self) -> str:
        answer = await self._http.request("GET", self._url)
        if answer.status != 200:
            raise FetchError(f"GET {self._url}: HTTP {answer.status}")
        return answer.body

    async def detect(self) -> bool:
        return False

    async def fetch(self, mac: str) -> Observation:
        mac = normalize_mac(mac)
        text = await self._document.get()
        nics = {normalize_mac(k): v for k, v in parse_json(DOCUMENT, text, dict).items()}
        if mac not in nics:
            flag = RedFlag("not-listed", "MAC not in the metadata", (DOCUMENT,), "unlisted")
            return Observation(mac, None, (flag,), {DOCUMENT: text})
        address = IPv4Interface(scalar(mac, str(nics[mac])))
        index = list(nics).index(mac)
        state = make_state(
            mac=mac,
            cloud=self.name,
            primary=index == 0,
            device_number=index,
            route_table=20000 + index,
            route_metric=700 + index,
            ipv4_addresses=(address.ip,),
            ipv4_subnet=address.network,
            ipv4_gateway=address.network.network_address + 1,
        )
        return Observation(mac, state)

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        return {key: await self._document.get() for key in keys}

    async def close(self) -> None:
        await self._http.close()
