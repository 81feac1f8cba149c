"""A synchronous client for the IMDS simulator's control socket (the lab's API is synchronous;
``nicreconciled.sim.client.SimClient`` is the asyncio one, same routes)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Mapping
from typing import Any


class SimControlError(RuntimeError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("sim", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class SimControl:
    """add_nic / update_nic / remove_nic / set_primary / list_nics over the control socket."""

    def __init__(self, control_path: str, timeout: float = 10.0) -> None:
        self.control_path = control_path
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.control_path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
        except OSError as exc:
            raise SimControlError(f"{method} {path}: {exc}") from exc
        finally:
            conn.close()
        data = json.loads(text) if text else None
        if resp.status >= 400:
            raise SimControlError(f"{method} {path}: HTTP {resp.status}: {data}")
        return data

    def ready(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/ready")
        return result

    def wait_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ready()
            except SimControlError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def list_nics(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/nics")["nics"]
        return result

    def add_nic(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/nics", dict(spec))
        return result

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/nics/{mac}", dict(changes))
        return result

    def remove_nic(self, mac: str) -> None:
        self._call("DELETE", f"/nics/{mac}")

    def set_primary(self, mac: str) -> None:
        self._call("PUT", "/primary", {"mac": mac})

    def stats(self, log: bool = True) -> dict[str, Any]:
        """The simulator's request statistics (``GET /stats``), with its log unless LOG is
        False."""
        result: dict[str, Any] = self._call("GET", "/stats" if log else "/stats?log=0")
        return result

    def set_vm(self, changes: Mapping[str, str | None]) -> dict[str, Any]:
        """A CloudStack VR simulator's answers for the VM (``--cloud cloudstack``)."""
        result: dict[str, Any] = self._call("PUT", "/vm", dict(changes))
        return result
