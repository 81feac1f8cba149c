"""sd_notify against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from nicreconciled import systemd


class TestNotify:
    def test_a_message_reaches_a_filesystem_socket(self, tmp_path: Path) -> None:
        path = str(tmp_path / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            assert systemd.notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
            assert server.recv(4096) == b"READY=1\nSTATUS=ok"

    def test_an_abstract_socket_keeps_its_leading_nul(self) -> None:
        name = f"nicreconciled-test-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(b"\0" + name.encode())
            assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
            assert server.recv(4096) == b"WATCHDOG=1"

    def test_without_notify_socket_nothing_is_sent(self) -> None:
        assert not systemd.notify("READY=1", {})

    def test_a_dead_socket_is_not_an_error(self, tmp_path: Path) -> None:
        assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


class TestWatchdogInterval:
    def test_half_of_watchdog_usec(self) -> None:
        assert systemd.watchdog_interval({"WATCHDOG_USEC": "400000"}) == 0.2

    def test_no_watchdog_asked(self) -> None:
        assert systemd.watchdog_interval({}) is None

    @pytest.mark.parametrize("usec", ["0", "-5", "soon", ""])
    def test_a_useless_watchdog_usec_is_ignored(self, usec: str) -> None:
        assert systemd.watchdog_interval({"WATCHDOG_USEC": usec}) is None

    def test_watchdog_pid_naming_us_is_obeyed(self) -> None:
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert systemd.watchdog_interval(env) == 15.0

    def test_a_watchdog_meant_for_another_process_is_not_ours(self) -> None:
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
        assert systemd.watchdog_interval(env, pid=4242) is None
        assert systemd.watchdog_interval({**env, "WATCHDOG_PID": "x"}, pid=4242) is None


class TestMessages:
    def test_ready_carries_the_status_line(self) -> None:
        assert systemd.ready("2 NICs") == "READY=1\nSTATUS=2 NICs"

    def test_status_is_one_line(self) -> None:
        assert systemd.status("a\nb\r\nc") == "STATUS=a b c"

    def test_reloading_names_the_monotonic_time_it_started(self) -> None:
        assert systemd.reloading(1234567) == "RELOADING=1\nMONOTONIC_USEC=1234567"

    def test_reloading_defaults_to_clock_monotonic_now(self) -> None:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        first, second = systemd.reloading().split("\n")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert first == "RELOADING=1"
        name, _, value = second.partition("=")
        assert name == "MONOTONIC_USEC"
        assert before <= int(value) <= after

    def test_the_fixed_messages(self) -> None:
        assert systemd.WATCHDOG == "WATCHDOG=1"
        assert systemd.STOPPING == "STOPPING=1"

    def test_each_message_is_one_datagram(self, tmp_path: Path) -> None:
        path = str(tmp_path / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            env = {"NOTIFY_SOCKET": path}
            for message in (systemd.ready("1 NICs"), systemd.WATCHDOG, systemd.reloading(7)):
                assert systemd.notify(message, env)
            got = [server.recv(4096) for _ in range(3)]
        assert got == [b"READY=1\nSTATUS=1 NICs", b"WATCHDOG=1", b"RELOADING=1\nMONOTONIC_USEC=7"]
