"""The simulators' JSON control API: what every cloud's simulator answers, and the helpers
its own routes use. A simulator adds its routes in ``add_control_routes``."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nicreconciled.model import normalize_mac
from nicreconciled.sim.server import FaultyServer

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Simulated(Protocol):
    """What ``python -m nicreconciled.sim --cloud NAME`` needs of a simulator class."""

    #: The key of the metadata URL in the ready line ({"imds": URL, "control": PATH}).
    READY_KEY: str

    def make_app(self) -> web.Application: ...

    def load_scenario(self, data: dict[str, Any]) -> None: ...

    def add_control_routes(self, app: web.Application) -> None: ...

    def wake(self) -> None: ...


def message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@web.middleware
async def errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except LookupError as exc:
        return web.json_response({"error": f"unknown: {exc}"}, status=404)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": message(exc)}, status=400)


async def body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


async def set_fault_from(sim: FaultyServer, request: web.Request) -> dict[str, Any]:
    data = await body(request)
    duration = data.get("duration")
    if duration is not None and not isinstance(duration, int | float):
        raise ValueError("duration must be a number of seconds")
    sim.set_fault(str(data.get("mode", "")), None if duration is None else float(duration))
    return {"mode": sim.fault, "until": sim.fault_until}


def add_common_routes(app: web.Application, sim: FaultyServer) -> None:
    """The control calls every simulator answers: faults and the request log."""

    async def fault(request: web.Request) -> web.Response:
        return web.json_response(await set_fault_from(sim, request))

    async def stats(request: web.Request) -> web.Response:
        include_log = request.query.get("log", "1") not in ("0", "false", "no")
        return web.json_response(sim.stats(include_log))

    async def reset_stats(_request: web.Request) -> web.Response:
        sim.reset_stats()
        return web.json_response(sim.stats(False))

    app.router.add_put("/fault", fault)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset_stats)


class NicTable(Protocol):
    """A simulator that keeps its NICs as specs keyed by MAC (EC2, OCI, OpenStack)."""

    def nics(self) -> Sequence[Any]: ...

    def add_nic(self, spec: Mapping[str, Any]) -> BaseModel: ...

    def update_nic(self, mac: str, changes: Mapping[str, Any]) -> BaseModel: ...

    def remove_nic(self, mac: str) -> None: ...

    def set_raw(self, path: str, text: str | None) -> None: ...


def add_nic_routes(app: web.Application, sim: NicTable) -> None:
    """/nics (list, add, change, remove by MAC), /raw (serve a text in place of a
    document) and, for a simulator with ``set_primary``, /primary."""

    def mac_of(request: web.Request) -> str:
        mac = normalize_mac(request.match_info["mac"])
        if not any(spec.mac == mac for spec in sim.nics()):
            raise KeyError(mac)
        return mac

    async def list_nics(_request: web.Request) -> web.Response:
        return web.json_response({"nics": [s.model_dump(mode="json") for s in sim.nics()]})

    async def add_nic(request: web.Request) -> web.Response:
        spec = sim.add_nic(await body(request))
        return web.json_response(spec.model_dump(mode="json"), status=201)

    async def update_nic(request: web.Request) -> web.Response:
        spec = sim.update_nic(mac_of(request), await body(request))
        return web.json_response(spec.model_dump(mode="json"))

    async def remove_nic(request: web.Request) -> web.Response:
        mac = mac_of(request)
        sim.remove_nic(mac)
        return web.json_response({"removed": mac})

    async def raw(request: web.Request) -> web.Response:
        data = await body(request)
        path, text = data.get("path"), data.get("text")
        if not isinstance(path, str) or not (text is None or isinstance(text, str)):
            raise ValueError("need {path: str, text: str|null}")
        sim.set_raw(path, text)
        return web.json_response({"path": path, "text": text})

    app.router.add_get("/nics", list_nics)
    app.router.add_post("/nics", add_nic)
    app.router.add_patch("/nics/{mac}", update_nic)
    app.router.add_delete("/nics/{mac}", remove_nic)
    app.router.add_put("/raw", raw)
    set_primary: Callable[[str], None] | None = getattr(sim, "set_primary", None)
    if set_primary is not None:

        async def primary(request: web.Request) -> web.Response:
            mac = str((await body(request)).get("mac", ""))
            set_primary(mac)
            return web.json_response({"primary": normalize_mac(mac)})

        app.router.add_put("/primary", primary)


def control_app(sim: FaultyServer, ready_key: str, url: str) -> web.Application:
    """The control application of SIM: /ready, faults, statistics, then its own routes."""

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({ready_key: url, "pid": os.getpid()})

    app = web.Application(middlewares=[errors])
    app.router.add_get("/ready", ready)
    add_common_routes(app, sim)
    add = getattr(sim, "add_control_routes", None)
    if add is not None:
        add(app)
    return app
