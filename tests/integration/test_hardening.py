"""The unit's hardening, scored by systemd, and the daemon doing its job under equivalent limits.

There is no systemd as PID 1 here to start the unit, so the job is checked under the
restrictions that matter for it, reproduced by hand: no capabilities at all
(CapabilityBoundingSet=), no_new_privs (NoNewPrivileges=), and a read-only file system in
which only the unit's ReadWritePaths= and the state directory are writable
(ProtectSystem=strict). The real `netplan generate` runs inside that, writing only where
the unit allows.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON, require_tool
from tests.integration.conftest import FAKE_TOOL, Stack, nic_spec

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "nicreconciled.service"
MAC = "0a:00:00:00:00:02"


def unit_values(key: str) -> list[str]:
    out: list[str] = []
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{key}="):
            out += line.split("=", 1)[1].split()
    return out


class TestSecurityScore:
    def test_systemd_rates_the_unit_exposure_at_most_2(self, tmp_path: Path) -> None:
        analyze = require_tool("systemd-analyze")
        unit = tmp_path / "nicreconciled.service"
        entry = Path(sys.executable).parent / "nicreconciled"
        unit.write_text(UNIT.read_text().replace("/usr/bin/nicreconciled", str(entry)))
        done = subprocess.run(
            [analyze, "security", "--offline=true", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert found, done.stdout + done.stderr
        assert float(found.group(1)) <= 2.0

    def test_the_unit_grants_no_capability_and_only_the_write_paths_it_needs(self) -> None:
        assert unit_values("CapabilityBoundingSet") == []
        assert set(unit_values("RestrictAddressFamilies")) == {
            "AF_UNIX",
            "AF_INET",
            "AF_INET6",
            "AF_NETLINK",
        }
        writable = {p.lstrip("-") for p in unit_values("ReadWritePaths")}
        assert writable == {
            "/run/netplan",
            "/run/NetworkManager/system-connections",
            "/run/systemd/network",
            # [metrics] textfile: Debian's node_exporter textfile collector directory.
            "/var/lib/prometheus/node-exporter",
        }
        # The rest of /run is read-only (MountAPIVFS would leave it writable).
        assert unit_values("ReadOnlyPaths") == ["/run"]


# A private mount namespace: /run becomes a fresh tmpfs, then the whole tree is read-only
# except the unit's ReadWritePaths (under that /run), a private temporary directory
# (PrivateTmp=; here $TMPDIR) and the state directory; then every capability is dropped for
# good before the daemon starts.
CONFINE = r"""
set -e
state="$0"
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/netplan /run/NetworkManager/system-connections /run/systemd/network
mount -o remount,bind,ro /
mount -o remount,bind,ro /run
for dir in /run/netplan /run/NetworkManager/system-connections /run/systemd/network \
           "$TMPDIR" "$state"; do
    mount --bind "$dir" "$dir"
    mount -o remount,bind,rw "$dir"
done
exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all --reuid=0 -- "$@"
"""

PROBE = r"""
set -e
"$@" --config "$CONFIG" --log-format json once
cp /run/netplan/*.yaml "$STATE/"
ls /run/systemd/network > "$STATE/networkd-files"
grep -E '^Cap(Eff|Prm|Bnd)|^NoNewPrivs' /proc/self/status > "$STATE/creds"
touch /etc/nicreconciled-must-not-exist 2>/dev/null && echo "etc writable" > "$STATE/leak" || true
touch /run/nicreconciled-must-not-exist 2>/dev/null && echo "run writable" >> "$STATE/leak" || true
"""


class TestConfinedRun:
    async def test_once_converges_and_applies_without_capabilities_on_a_read_only_system(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        require_tool("netplan")
        require_tool("setpriv")
        state = tmp_path / "state"
        state.mkdir()
        private_tmp = tmp_path / "private-tmp"
        private_tmp.mkdir()
        fakebin = tmp_path / "bin"
        fakebin.mkdir()
        (fakebin / "networkctl").write_text(FAKE_TOOL)  # no networkd in a test namespace
        (fakebin / "networkctl").chmod(0o755)
        cfg = tmp_path / "confined.toml"
        cfg.write_text(
            "\n".join(
                [
                    'cloud = "ec2"',
                    'renderer = "netplan"',
                    'output_dir = "/run/netplan"',
                    f'state_dir = "{state}"',
                    "apply = true",
                    "[interfaces]",
                    "virtual = true",
                    'ignore = ["nrp*"]',
                    "[udev]",
                    'source = "kernel"',
                    "[ec2]",
                    'endpoint = "http://127.0.0.1:8080"',
                    'fallback_endpoint = ""',
                    "[polling]",
                    "deadline = 5",
                ]
            )
            + "\n"
        )
        await stack.sim.add_nic(nic_spec(MAC))
        stack.ns.plug("eth1", MAC)
        env = {
            "PATH": f"{fakebin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "NICR_APPLY_LOG": str(state / "apply.log"),
            "CONFIG": str(cfg),
            "STATE": str(state),
            "TMPDIR": str(private_tmp),
        }
        argv = ["unshare", "--mount", "sh", "-c", CONFINE, str(state)]
        argv += ["sh", "-c", PROBE, "probe", PYTHON, "-m", "nicreconciled"]
        log = (tmp_path / "confined.log").open("wb")
        proc = stack.ns.popen(argv, env=env, stderr=log)
        code = await asyncio.to_thread(proc.wait, 60)
        output = (tmp_path / "confined.log").read_text()
        assert code == 0, output
        creds = (state / "creds").read_text()
        assert "CapEff:\t0000000000000000" in creds
        assert "CapBnd:\t0000000000000000" in creds
        assert "NoNewPrivs:\t1" in creds
        assert not (state / "leak").exists()
        assert (state / f"90-nicreconciled-{MAC.replace(':', '')}.yaml").exists()
        # The real netplan generate ran in a scratch tree; our NIC's file was installed
        # where the unit lets it, and nothing else.
        networkd = (state / "networkd-files").read_text().split()
        assert networkd == ["10-netplan-nicr-0a0000000002.network"]
        assert (state / "apply.log").read_text().splitlines() == ["networkctl reload"]
