"""python -m nicreconciled.sim [--cloud NAME] --listen HOST:PORT --control SOCKET
                              [--scenario FILE]

Serves a cloud's metadata service (``SIMULATORS``: IMDSv2 for --cloud ec2, the default, a
CloudStack virtual router for --cloud cloudstack, ...) on HOST:PORT and a JSON control API
on a filesystem unix socket. Unix sockets cross network namespaces, so a test in the root
namespace can script a simulator running inside a test namespace. Prints one JSON line when
ready, {READY_KEY: URL, "control": PATH} ({"imds": ...} for EC2, {"vr": ...} for
CloudStack), and exits 0 on SIGTERM or SIGINT.

Control API, every cloud: GET /ready, PUT /fault {mode, duration}, GET /stats, POST
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
from pathlib import Path
from typing import Any

from aiohttp import web

from nicreconciled.sim import SIMULATORS, simulator_class
from nicreconciled.sim import control as ctlapi
from nicreconciled.sim.server import url_of


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


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
    sim = simulator_class(cloud)()
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
    ready = {sim.READY_KEY: url}
    ctl = web.AppRunner(ctlapi.control_app(sim, sim.READY_KEY, url), access_log=None)
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
        choices=tuple(SIMULATORS),
        default="ec2",
        help="which cloud's metadata service to simulate (default: EC2's IMDSv2)",
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
        print(f"nicreconciled.sim: {ctlapi.message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
