"""netplan's generator, and what the installed netplan can express (asked once per process).

The generator. ``netplan generate`` (the Python front end) runs netplan's C generator and, from
netplan 1.0 on, then ``systemctl daemon-reload`` whatever ``--root-dir`` says: that reruns
netplan's systemd generator on the live tree, which rewrites every netplan-generated file in
/run/systemd/network, and the next ``networkctl reload`` reconfigures every netplan link (seen
on Debian 13, netplan 1.1.2 and networkd 257: another NIC "Unmanaging interface", its lease and
addresses gone, at a hot-plug). So the appliers and the probe below call the generator itself
(``GENERATORS``, or ``[netplan] generator``): the same output, no side effect, and 17 ms
instead of the front end's ~0.19 s.

netplan has no version flag (0.106 answers ``netplan --version`` with a usage error) and
``netplan info`` lists no feature for ``ra-overrides``, so the one reliable test is the
real thing: ``netplan generate --root-dir SCRATCH`` on a tiny definition that uses the key,
in a scratch tree (nothing outside it is read or written). netplan 0.106 rejects it
("unknown key 'ra-overrides'"); netplan >= 1.1 writes ``RouteTable=`` into the generated
``.network`` file. The answer is cached: it cannot change while the daemon runs (an upgrade
of netplan means a restart), and the probe costs a ``netplan generate`` (~0.15 s, blocking:
it runs once, when the netplan renderer first renders a NIC that needs the answer, not at
start-up).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import structlog

from nicreconciled.system.proc import child_env

log = structlog.get_logger(__name__)

#: Seconds one probe may take before it counts as "not supported".
PROBE_TIMEOUT: Final = 20.0
PROBE_TABLE: Final = 10099
#: A MAC no NIC has (locally administered, all-zero device part): the definition is only
#: generated into the scratch tree, never loaded.
_PROBE_YAML: Final = f"""network:
  version: 2
  ethernets:
    nicr-probe:
      match: {{macaddress: "02:00:00:00:00:00"}}
      renderer: networkd
      dhcp6: true
      accept-ra: true
      ra-overrides: {{table: {PROBE_TABLE}}}
"""


#: Where distributions put netplan's generator (Debian and Ubuntu: /usr/libexec/netplan,
#: with a /lib/netplan link on Debian 12; others /usr/lib/netplan).
GENERATORS: Final = (
    "/usr/libexec/netplan/generate",
    "/lib/netplan/generate",
    "/usr/lib/netplan/generate",
)


def generate_command(configured: str = "") -> tuple[str, ...]:
    """The argv that generates netplan's output (``--root-dir DIR`` is appended): CONFIGURED
    (``[netplan] generator``), else the first of GENERATORS that exists, else the front end
    (``netplan generate``; on netplan >= 1.0 it also reloads systemd: logged once)."""
    if configured:
        return (configured,)
    for path in GENERATORS:
        if os.access(path, os.X_OK):
            return (path,)
    _warn_front_end()
    return ("netplan", "generate")


@functools.cache
def _warn_front_end() -> None:
    log.warning(
        "netplan_generator_not_found",
        tried=list(GENERATORS),
        fallback="netplan generate",
        consequence="netplan >= 1.0 then reloads systemd at every apply, which reconfigures "
        "every netplan link; set [netplan] generator",
    )


@functools.cache
def supports_ra_table(netplan: str | tuple[str, ...] = ()) -> bool:
    """Whether NETPLAN accepts ``ra-overrides: {table: N}`` and renders it for networkd:
    a front end's path (run as ``PATH generate``), or the generator's argv (() = found by
    ``generate_command``).

    Never raises: a netplan that is missing, fails or hangs counts as "no". Logs the answer
    once (a warning when it is no: the IPv6 default route then stays out of the NIC tables).
    """
    argv = (netplan, "generate") if isinstance(netplan, str) else netplan or generate_command()
    supported, reason = _probe(argv)
    if supported:
        log.info("netplan_ra_table", supported=True)
    else:
        log.warning(
            "netplan_ra_table",
            supported=False,
            reason=reason,
            consequence="netplan < 1.1 cannot put router advertisement routes in a table: "
            "IPv6 replies to off-subnet peers from a secondary NIC follow the main table",
        )
    return supported


def _probe(argv: tuple[str, ...]) -> tuple[bool, str]:
    try:
        scratch = Path(tempfile.mkdtemp(prefix="nicreconciled-netplan-probe."))
    except OSError as exc:
        return False, f"no scratch directory: {exc.strerror}"
    try:
        conf = scratch / "etc" / "netplan"
        try:
            conf.mkdir(mode=0o700, parents=True)
            fd = os.open(conf / "probe.yaml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_PROBE_YAML)
        except OSError as exc:
            return False, f"cannot write the probe: {exc.strerror}"
        try:
            done = subprocess.run(
                [*argv, "--root-dir", str(scratch)],
                env=child_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{' '.join(argv)}: {exc}"
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            first = lines[0].replace(f"{scratch}/", "") if lines else ""
            return False, first[:200] or f"exit status {done.returncode}"
        network = scratch / "run" / "systemd" / "network" / "10-netplan-nicr-probe.network"
        try:
            text = network.read_text(encoding="utf-8")
        except OSError as exc:
            return False, f"no {network.name} generated: {exc.strerror}"
        if f"RouteTable={PROBE_TABLE}" not in text.splitlines():
            return False, "accepted, but no RouteTable= in the generated file"
        return True, ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
