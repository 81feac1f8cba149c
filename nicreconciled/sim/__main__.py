"""python -m nicreconciled.sim [--cloud ec2|cloudstack] --listen HOST:PORT --control SOCKET
                              [--scenario FILE]

Serves IMDSv2 (--cloud ec2, the default) or a CloudStack virtual router's metadata
(--cloud cloudstack) on HOST:PORT and a JSON control API on a filesystem unix socket. Unix
sockets cross network namespaces, so a test in the root namespace can script a simulator
running inside a test namespace. Prints one JSON line when ready, {"imds": URL, "control":
PATH} or {"vr": URL, "control": PATH}, and exits 0 on SIGTERM or SIGINT.

Control API, both clouds: GET /ready, PUT /fault {mode, duration}, GET /stats, POST
/stats/reset. EC2: /nics, /nics/{mac}, /primary, /raw. CloudStack: GET /vm, PUT /vm
{key: text|null} (null removes the key, "user-data" sets the user data).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from nicreconciled.model import normalize_mac
from nicreconciled.sim.cloudstack import VrSim
from nicreconciled.sim.imds import ImdsSim
from nicreconciled.sim.server import FaultyServer, url_of

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except LookupError as exc:
        return web.json_response({"error": f"unknown: {exc}"}, status=404)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": _message(exc)}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


async def _set_fault(sim: FaultyServer, request: web.Request) -> dict[str, Any]:
    body = await _body(request)
    duration = body.get("duration")
    if duration is not None and not isinstance(duration, int | float):
        raise ValueError("duration must be a number of seconds")
    sim.set_fault(str(body.get("mode", "")), None if duration is None else float(duration))
    return {"mode": sim.fault, "until": sim.fault_until}


def make_vr_control_app(sim: VrSim, vr_url: str) -> web.Application:
    """The CloudStack VR simulator's control API; each handler maps onto a VrSim method."""

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"vr": vr_url, "pid": os.getpid()})

    async def get_vm(_request: web.Request) -> web.Response:
        return web.json_response(sim.vm())

    async def put_vm(request: web.Request) -> web.Response:
        return web.json_response(sim.set_vm(await _body(request)))

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/ready", ready)
    app.router.add_get("/vm", get_vm)
    app.router.add_put("/vm", put_vm)
    _add_common_routes(app, sim)
    return app


def make_control_app(sim: ImdsSim, imds_url: str) -> web.Application:
    """The JSON control API; every handler maps onto an ImdsSim method."""

    def mac_of(request: web.Request) -> str:
        mac = normalize_mac(request.match_info["mac"])
        if not any(spec.mac == mac for spec in sim.nics()):
            raise KeyError(mac)
        return mac

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"imds": imds_url, "pid": os.getpid()})

    async def list_nics(_request: web.Request) -> web.Response:
        return web.json_response({"nics": [s.model_dump(mode="json") for s in sim.nics()]})

    async def add_nic(request: web.Request) -> web.Response:
        spec = sim.add_nic(await _body(request))
        return web.json_response(spec.model_dump(mode="json"), status=201)

    async def update_nic(request: web.Request) -> web.Response:
        spec = sim.update_nic(mac_of(request), await _body(request))
        return web.json_response(spec.model_dump(mode="json"))

    async def remove_nic(request: web.Request) -> web.Response:
        mac = mac_of(request)
        sim.remove_nic(mac)
        return web.json_response({"removed": mac})

    async def primary(request: web.Request) -> web.Response:
        sim.set_primary(str((await _body(request)).get("mac", "")))
        return web.json_response({"primary": sim.primary})

    async def raw(request: web.Request) -> web.Response:
        body = await _body(request)
        path, text = body.get("path"), body.get("text")
        if not isinstance(path, str) or not (text is None or isinstance(text, str)):
            raise ValueError("need {path: str, text: str|null}")
        sim.set_raw(path, text)
        return web.json_response({"path": path, "text": text})

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/ready", ready)
    app.router.add_get("/nics", list_nics)
    app.router.add_post("/nics", add_nic)
    app.router.add_patch("/nics/{mac}", update_nic)
    app.router.add_delete("/nics/{mac}", remove_nic)
    app.router.add_put("/primary", primary)
    app.router.add_put("/raw", raw)
    _add_common_routes(app, sim)
    return app


def _add_common_routes(app: web.Application, sim: FaultyServer) -> None:
    """The control calls both simulators answer: faults and the request log."""

    async def fault(request: web.Request) -> web.Response:
        return web.json_response(await _set_fault(sim, request))

    async def stats(request: web.Request) -> web.Response:
        include_log = request.query.get("log", "1") not in ("0", "false", "no")
        return web.json_response(sim.stats(include_log))

    async def reset_stats(_request: web.Request) -> web.Response:
        sim.reset_stats()
        return web.json_response(sim.stats(False))

    app.router.add_put("/fault", fault)
    app.router.add_get("/stats", stats)
    app.router.add_post("/stats/reset", reset_stats)


def _clear_stale_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


async def run(
    host: str,
    port: int,
    control: Path,
    scenario: dict[str, Any] | None,
    cloud: str = "ec2",
) -> int:
    sim: ImdsSim | VrSim = VrSim() if cloud == "cloudstack" else ImdsSim()
    if scenario is not None:
        sim.load_scenario(scenario)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    served = web.AppRunner(sim.make_app(), access_log=None)
    await served.setup()
    await web.TCPSite(served, host, port).start()
    url = url_of(served)
    if isinstance(sim, VrSim):
        ctl_app, ready = make_vr_control_app(sim, url), {"vr": url}
    else:
        ctl_app, ready = make_control_app(sim, url), {"imds": url}
    ctl = web.AppRunner(ctl_app, access_log=None)
    await ctl.setup()
    _clear_stale_socket(control)
    await web.UnixSite(ctl, str(control)).start()
    os.chmod(control, 0o600)
    print(json.dumps({**ready, "control": str(control)}), flush=True)
    try:
        await stop.wait()
    finally:
        sim.wake()
        await ctl.cleanup()
        await served.cleanup()
        _clear_stale_socket(control)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nicreconciled.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cloud",
        choices=("ec2", "cloudstack"),
        default="ec2",
        help="simulate EC2's IMDSv2 (default) or a CloudStack virtual router",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="metadata address (default 127.0.0.1:8080; port 0 = any free port)",
    )
    parser.add_argument("--control", type=Path, required=True, metavar="SOCKET")
    parser.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="JSON: ec2 {nics, primary, raw, fault}; cloudstack {vm, fault}",
    )
    args = parser.parse_args(argv)
    scenario = None
    if args.scenario is not None:
        try:
            scenario = json.loads(args.scenario.read_text())
        except (OSError, ValueError) as exc:
            print(f"{args.scenario}: {exc}", file=sys.stderr)
            return 2
    host, port = args.listen
    try:
        return asyncio.run(run(host, port, args.control, scenario, args.cloud))
    except (OSError, ValueError) as exc:
        print(f"nicreconciled.sim: {_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
