"""Start-up never blocks boot: READY=1 before the cloud is known, detection a reported phase.

``cloud = "auto"`` in a test namespace with nothing answering: the EC2 addresses have no
route there and no virtual router can be found (no traffic leaves the namespace).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON
from tests.integration.conftest import Stack
from tests.integration.test_notify import Listener, listener, start_under_systemd, status_of

pytestmark = pytest.mark.integration
__all__ = ["listener"]  # the fixture, imported for this module's tests

NOTHING = "no cloud detected yet: tried ec2 ("


class TestNoCloudAnswers:
    async def test_ready_first_then_detection_reported_and_signals_behave(
        self,
        stack: Stack,
        listener: Callable[[Path], Listener],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        stack.cloud = "auto"
        note = listener(stack.tmp / "notify.sock")
        started = time.monotonic()
        start_under_systemd(stack, monkeypatch, {"NOTIFY_SOCKET": str(note.path)})
        i = await note.wait(lambda m: m.startswith("READY=1\n"), "READY=1")
        ready_after = note.got[i][0] - started
        assert status_of(note.messages()[i]) == "STATUS=detecting the cloud"
        assert not stack.events("no_cloud_detected") or ready_after < 1.0
        j = await note.wait(lambda m: m.startswith(f"STATUS={NOTHING}"), "the detection line")
        line = note.messages()[j]
        assert "cloudstack (" in line, line
        print(f"READY=1 {ready_after:.2f} s after the process started; then: {line}")

        # `status` shows the phase, from the daemon's status file.
        done = subprocess.run(
            [PYTHON, "-m", "nicreconciled", "--config", str(stack.tmp / "nicreconciled.toml"),
             "status"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"daemon: detecting: {NOTHING}"), done.stdout

        # SIGHUP retries at once and keeps it alive; SIGTERM stops it with 0.
        rounds = len(stack.events("no_cloud_detected"))
        assert stack.daemon is not None
        stack.daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(stack.events("no_cloud_detected")) <= rounds:
            stack.assert_alive()
            assert time.monotonic() < deadline, stack.tail()
            await asyncio.sleep(0.05)
        stack.assert_alive()
        stopping = time.monotonic()
        assert stack.stop(signal.SIGTERM, timeout=5) == 0
        assert time.monotonic() - stopping < 5

    @pytest.mark.parametrize("command", ["once", "render"])
    async def test_once_and_render_give_up_after_the_deadline_naming_what_was_tried(
        self, stack: Stack, command: str
    ) -> None:
        stack.cloud = "auto"
        started = time.monotonic()
        proc = stack.start(command, polling={"deadline": 2})
        code = await asyncio.to_thread(proc.wait, 60)
        took = time.monotonic() - started
        lines = stack.log_path.read_text().strip().splitlines()
        assert code == 1, stack.tail()
        assert lines[-1].startswith("nicreconciled: no cloud detected after"), lines[-1]
        assert "tried ec2 (" in lines[-1]
        assert "cloudstack (" in lines[-1]
        assert took < 30, took  # the 2 s deadline plus one detection round, not forever
