"""The udev watcher inside the unit's confinement, and when the kernel drops events.

Each case runs a small program in a test-made network namespace (kernel uevents of a veth
reach only sockets in its namespace), without capabilities where the unit has none.
"""

from __future__ import annotations

import json

from tests.conftest import PYTHON, Netns, require_tool

# Starts a watcher, then (blocking the loop, so nothing is read) makes N veth pairs, then
# lets the loop drain: prints what the watcher saw as one JSON line.
PROGRAM = r"""
import asyncio, json, subprocess, sys
from nicreconciled.udev import UdevWatcher

async def main(size: int, pairs: int) -> None:
    watcher = UdevWatcher("kernel", buffer_size=size)
    seen, lost = [], []
    watcher.start(lambda e: seen.append(e.ifname), on_lost=lambda: lost.append(1))
    for i in range(pairs):
        subprocess.run(["ip", "link", "add", f"nwa{i}", "type", "veth", "peer", "name", f"nwb{i}"],
                       check=True)
    for _ in range(100):
        await asyncio.sleep(0.02)
    watcher.stop()
    print(json.dumps({"buffer": watcher.buffer_size, "seen": len(set(seen)), "lost": len(lost)}))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]


def watch(netns: Netns, size: int, pairs: int, prefix: list[str]) -> dict[str, int]:
    done = netns.run([*prefix, PYTHON, "-c", PROGRAM, str(size), str(pairs)], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class TestUdevWatcher:
    def test_it_starts_without_capabilities_on_a_smaller_buffer_and_says_so(
        self, netns: Netns
    ) -> None:
        require_tool("setpriv")
        # Creating veths needs CAP_NET_ADMIN: only the watcher runs without capabilities.
        program = "import sys; from nicreconciled.udev import UdevWatcher; "
        program += "print(UdevWatcher('kernel').buffer_size)"
        done = netns.run([*NO_CAPS, PYTHON, "-c", program], timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert int(done.stdout.split()[-1]) > 0  # what SO_RCVBUF gave (rmem_max caps it)
        assert "udev_buffer_limited" in done.stdout + done.stderr

    def test_with_capabilities_it_gets_the_full_buffer(self, netns: Netns) -> None:
        result = watch(netns, 8 * 1024 * 1024, 2, [])
        assert result == {"buffer": 8 * 1024 * 1024, "seen": 4, "lost": 0}

    def test_an_overflow_is_reported_so_the_daemon_rescans(self, netns: Netns) -> None:
        # SO_RCVBUF's floor is ~2 KiB: 60 pairs (120 add events) cannot fit.
        result = watch(netns, 1, 60, [])
        assert result["lost"] >= 1, result
        assert result["seen"] < 120


class TestDaemonUnderTheUnitsLimits:
    def test_run_starts_without_capabilities_and_stops_on_sigterm(
        self, netns: Netns, tmp_path: object
    ) -> None:
        require_tool("setpriv")
        from pathlib import Path

        tmp = Path(str(tmp_path))
        cfg = tmp / "c.toml"
        cfg.write_text(
            f'cloud = "ec2"\noutput_dir = "{tmp}/out"\nstate_dir = "{tmp}/state"\n'
            'apply = false\n[interfaces]\nvirtual = true\n[udev]\nsource = "kernel"\n'
            '[ec2]\nendpoint = "http://127.0.0.1:9"\nfallback_endpoint = ""\n'
        )
        log = tmp / "log"
        with log.open("wb") as err:
            daemon = netns.popen(
                [*NO_CAPS, PYTHON, "-m", "nicreconciled", "--config", str(cfg),
                 "--log-format", "json", "run"],
                stderr=err,
            )  # fmt: skip
            from tests.conftest import wait_for

            wait_for(lambda: b'"ready"' in log.read_bytes() or daemon.poll() is not None,
                     30, "the daemon to be ready")  # fmt: skip
            assert daemon.poll() is None, log.read_text()[-2000:]
            daemon.terminate()
            assert daemon.wait(timeout=10) == 0
        assert "udev_buffer_limited" in log.read_text()
        assert "PermissionError" not in log.read_text()
