"""The subprocess chokepoint: children never see the service's notify socket or watchdog."""

from __future__ import annotations

import pytest

from nicreconciled.system import proc


class TestRun:
    async def test_children_do_not_inherit_the_notify_socket_or_the_watchdog(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", "@nicr-test-notify")
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        monkeypatch.setenv("WATCHDOG_PID", "1")
        monkeypatch.setenv("NICR_KEPT", "yes")
        done = await proc.run(["env"])
        assert done.ok
        names = {line.split("=", 1)[0] for line in done.stdout.splitlines()}
        assert "NICR_KEPT" in names  # the rest of the environment is passed on
        assert names.isdisjoint({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})

    async def test_a_missing_program_is_exit_127(self) -> None:
        done = await proc.run(["/nonexistent/nicr-tool"])
        assert done.returncode == 127

    async def test_a_timeout_is_exit_124(self) -> None:
        done = await proc.run(["sleep", "5"], timeout=0.1)
        assert done.returncode == 124


class TestSummary:
    @pytest.mark.parametrize(
        ("stderr", "said"),
        [
            ("Failed to reload: boom\n", "Failed to reload: boom"),
            ("first\nsecond\n", "second"),
            # netplan: the error, the offending line, a caret under it.
            (
                "/etc/netplan/x.yaml:9:7: Error in network definition: unknown key 'x'\n"
                "      x: 1\n      ^\n",
                "/etc/netplan/x.yaml:9:7: Error in network definition: unknown key 'x'",
            ),
            ("", ""),
        ],
    )
    def test_the_line_that_says_what_went_wrong(self, stderr: str, said: str) -> None:
        done = proc.Completed(("netplan", "generate"), 1, "", stderr)
        assert done.summary() == f"netplan generate exited 1: {said}"
