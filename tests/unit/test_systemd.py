"""sd_notify against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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
