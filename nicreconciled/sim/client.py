"""Async client for the simulator's control socket (see nicreconciled.sim.__main__)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp


class SimControlError(Exception):
    """The simulator refused a control call (or could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class SimClient:
    """One method per control call; JSON in, JSON out."""

    def __init__(self, control_path: str | Path, *, timeout: float = 10.0) -> None:
        self.control_path = str(control_path)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SimClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.control_path),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        try:
            async with self._session.request(method, f"http://sim{path}", json=body) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    error = data.get("error") if isinstance(data, dict) else None
                    raise SimControlError(resp.status, str(error or data))
                return data
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SimControlError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the control socket answers; returns {"imds": url, "pid": pid} (EC2) or
        {"vr": url, "pid": pid} (CloudStack)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.ready()
            except SimControlError:
                if time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)

    async def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/ready")
        return result

    async def list_nics(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/nics"))["nics"]
        return result

    async def add_nic(self, nic: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/nics", dict(nic))
        return result

    async def update_nic(self, mac: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PATCH", f"/nics/{mac}", dict(changes))
        return result

    async def remove_nic(self, mac: str) -> None:
        await self._call("DELETE", f"/nics/{mac}")

    async def set_primary(self, mac: str) -> None:
        await self._call("PUT", "/primary", {"mac": mac})

    async def set_fault(self, mode: str, duration: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if duration is not None:
            body["duration"] = duration
        await self._call("PUT", "/fault", body)

    async def set_raw(self, path: str, text: str | None) -> None:
        await self._call("PUT", "/raw", {"path": path, "text": text})

    async def get_vm(self) -> dict[str, Any]:
        """CloudStack: every metadata key the VR serves."""
        result: dict[str, Any] = await self._call("GET", "/vm")
        return result

    async def set_vm(self, changes: Mapping[str, str | None]) -> dict[str, Any]:
        """CloudStack: set metadata keys to text, remove them with None ("user-data" sets
        the user data); returns every key served afterwards."""
        result: dict[str, Any] = await self._call("PUT", "/vm", dict(changes))
        return result

    async def stats(self, log: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/stats" if log else "/stats?log=0")
        return result

    async def reset_stats(self) -> None:
        await self._call("POST", "/stats/reset")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
