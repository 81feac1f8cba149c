"""journald's native protocol: encoding, and real datagrams on a real AF_UNIX socket."""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from nicreconciled import journal, log


def parse(data: bytes) -> list[tuple[str, bytes]]:
    """The native format back into (name, value) pairs, in order (repeats kept)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            # Binary-safe form: NAME\n, 64-bit little-endian length, the bytes, \n.
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        out.append((name.decode("ascii"), value))
    return out


def as_dict(data: bytes) -> dict[str, str]:
    pairs = parse(data)
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"a field name repeats: {names}"
    return {n: v.decode() for n, v in pairs}


class TestEncoding:
    def test_a_simple_field_is_name_equals_value_newline(self) -> None:
        assert (
            journal.encode_field("NIC_MAC", "0a:00:00:00:00:02") == b"NIC_MAC=0a:00:00:00:00:02\n"
        )

    def test_a_value_with_a_newline_uses_the_length_prefixed_form(self) -> None:
        value = "Traceback:\n  boom"
        encoded = journal.encode_field("EXCEPTION", value)
        assert encoded == b"EXCEPTION\n" + struct.pack("<Q", 17) + value.encode() + b"\n"
        assert parse(encoded) == [("EXCEPTION", value.encode())]

    def test_an_empty_value_and_an_equals_sign_in_a_value_survive(self) -> None:
        data = journal.encode([("A", ""), ("B", "x=y"), ("C", "\n")])
        assert parse(data) == [("A", b""), ("B", b"x=y"), ("C", b"\n")]

    def test_non_utf8_text_is_escaped_not_an_error(self) -> None:
        assert journal.encode_field("X", "a\udcffb") == b"X=a\\udcffb\n"

    def test_bytes_go_through_untouched(self) -> None:
        assert parse(journal.encode_field("RAW", b"\x00\xff\n")) == [("RAW", b"\x00\xff\n")]


class TestFieldNames:
    @pytest.mark.parametrize(
        ("key", "name"),
        [
            ("error", "ERROR"),
            ("waiting_on", "WAITING_ON"),
            ("old-ifname", "OLD_IFNAME"),
            ("ipv6.count", "IPV6_COUNT"),
            ("_private", "PRIVATE"),
            ("__dunder", "DUNDER"),
            ("4to6", "F_4TO6"),
            ("_9", "F_9"),
            ("schön", "SCH_N"),
        ],
    )
    def test_keys_become_journal_field_names(self, key: str, name: str) -> None:
        assert journal.field_name(key) == name

    def test_a_key_with_nothing_usable_is_dropped(self) -> None:
        assert journal.field_name("___") is None
        assert journal.field_name("") is None

    def test_names_are_cut_at_64_characters(self) -> None:
        name = journal.field_name("k" * 100)
        assert name == "K" * 64


class TestPriority:
    @pytest.mark.parametrize(
        ("level", "prio"),
        [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
    )
    def test_structlog_levels_map_to_syslog_priorities(self, level: str, prio: int) -> None:
        assert journal.priority(level) == prio

    def test_an_unknown_level_is_info(self) -> None:
        assert journal.priority("chatty") == 6


class TestFields:
    def test_an_event_carries_message_priority_identifier_and_its_keys(self) -> None:
        fields = dict(
            journal.fields(
                {
                    "event": "rendered",
                    "level": "info",
                    "timestamp": 1.5,
                    "mac": "0a:00:00:00:00:02",
                    "ifname": "eth1",
                    "cloud": "ec2",
                    "fingerprint": "ab12",
                    "file": "90-nicreconciled-0a0000000002.yaml",
                }
            )
        )
        assert fields == {
            "MESSAGE": "rendered mac=0a:00:00:00:00:02 ifname=eth1 cloud=ec2 fingerprint=ab12 "
            "file=90-nicreconciled-0a0000000002.yaml",
            "PRIORITY": "6",
            "SYSLOG_IDENTIFIER": "nicreconciled",
            "NICRECONCILED_EVENT": "rendered",
            "NIC_MAC": "0a:00:00:00:00:02",
            "NIC_IFNAME": "eth1",
            "CLOUD": "ec2",
            "FINGERPRINT": "ab12",
            "FILE": "90-nicreconciled-0a0000000002.yaml",
        }

    def test_values_that_are_not_text_are_compact_json(self) -> None:
        fields = dict(
            journal.fields(
                {
                    "event": "poll",
                    "level": "info",
                    "seen": 2,
                    "waiting_on": ["ipv6: late"],
                    "ok": True,
                }
            )
        )
        assert fields["SEEN"] == "2"
        assert fields["WAITING_ON"] == '["ipv6: late"]'
        assert fields["OK"] == "true"
        assert fields["MESSAGE"] == 'poll seen=2 waiting_on=["ipv6: late"] ok=true'

    def test_the_message_is_one_line_with_ambiguous_strings_quoted(self) -> None:
        fields = dict(
            journal.fields(
                {"event": "fetch_failed", "level": "warning", "error": "timed out\nagain"}
            )
        )
        assert fields["MESSAGE"] == 'fetch_failed error="timed out\\nagain"'
        assert fields["ERROR"] == "timed out\nagain"
        assert fields["PRIORITY"] == "4"

    def test_none_is_shown_in_the_message_but_is_no_field(self) -> None:
        fields = dict(
            journal.fields({"event": "nic_tracked", "mac": "0a:00:00:00:00:02", "ifname": None})
        )
        assert "NIC_IFNAME" not in fields
        assert fields["MESSAGE"] == "nic_tracked mac=0a:00:00:00:00:02 ifname=null"

    def test_a_key_cannot_take_over_a_reserved_field(self) -> None:
        pairs = journal.fields(
            {"event": "x", "level": "error", "message": "hi", "priority": 0, "nic_mac": "m"}
        )
        fields = dict(pairs)
        assert [n for n, _ in pairs].count("MESSAGE") == 1
        assert fields["PRIORITY"] == "3"
        assert fields["NICRECONCILED_MESSAGE"] == "hi"
        assert fields["NICRECONCILED_PRIORITY"] == "0"
        assert fields["NICRECONCILED_NIC_MAC"] == "m"

    def test_a_long_value_is_cut_in_the_message_but_whole_in_its_field(self) -> None:
        fields = dict(journal.fields({"event": "x", "detail": "y" * 600}))
        assert fields["MESSAGE"] == "x detail=" + "y" * 500 + "...(100 more)"
        assert fields["DETAIL"] == "y" * 600

    def test_a_traceback_is_its_own_field_and_its_last_line_ends_the_message(self) -> None:
        tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n'
        fields = dict(
            journal.fields({"event": "reconciler_crashed", "level": "error", "exception": tb})
        )
        assert fields["EXCEPTION"] == tb
        assert fields["MESSAGE"] == "reconciler_crashed (ValueError: boom)"


# -- a real socket, structlog configured as the daemon configures it ----------------------


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for journald, and structlog writing to it."""
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    chosen = log.configure("journal", logging.DEBUG, journal_socket=path)
    assert chosen == "journal"
    try:
        yield server, path
    finally:
        server.close()
        structlog.reset_defaults()


def receive(server: socket.socket) -> tuple[bytes, list[int]]:
    """One datagram: its payload and any descriptors passed with it."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = server.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    return data, list(fds)


class TestThroughStructlog:
    def test_a_reconciler_event_arrives_as_one_datagram_of_fields(
        self, journald: tuple[socket.socket, str]
    ) -> None:
        server, _ = journald
        logger = structlog.get_logger("nicreconciled.reconciler").bind(
            mac="0a:00:00:00:00:02", ifname="eth1", cloud="ec2"
        )
        logger.info("rendered", file="90-x.yaml", fingerprint="ab12")
        data, fds = receive(server)
        assert fds == []
        fields = as_dict(data)
        assert fields["NIC_MAC"] == "0a:00:00:00:00:02"
        assert fields["NIC_IFNAME"] == "eth1"
        assert fields["CLOUD"] == "ec2"
        assert fields["FINGERPRINT"] == "ab12"
        assert fields["NICRECONCILED_EVENT"] == "rendered"
        assert fields["PRIORITY"] == "6"
        assert fields["SYSLOG_IDENTIFIER"] == "nicreconciled"
        assert fields["MESSAGE"].startswith("rendered mac=0a:00:00:00:00:02 ifname=eth1")

    def test_levels_arrive_as_priorities_and_debug_is_kept_when_asked(
        self, journald: tuple[socket.socket, str]
    ) -> None:
        server, _ = journald
        logger = structlog.get_logger()
        for method in ("debug", "info", "warning", "error", "critical"):
            getattr(logger, method)("e")
        prios = [as_dict(receive(server)[0])["PRIORITY"] for _ in range(5)]
        assert prios == ["7", "6", "4", "3", "2"]

    def test_an_exception_is_sent_in_the_binary_safe_form(
        self, journald: tuple[socket.socket, str]
    ) -> None:
        server, _ = journald
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger().exception("reconciler_crashed", mac="0a:00:00:00:00:02")
        data, _ = receive(server)
        assert b"EXCEPTION\n" in data  # the length-prefixed form, not EXCEPTION=
        fields = as_dict(data)
        assert fields["PRIORITY"] == "3"
        assert "Traceback" in fields["EXCEPTION"]
        assert fields["EXCEPTION"].rstrip().endswith("ValueError: boom")
        assert fields["MESSAGE"] == "reconciler_crashed mac=0a:00:00:00:00:02 (ValueError: boom)"

    def test_an_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd(
        self, journald: tuple[socket.socket, str]
    ) -> None:
        server, _ = journald
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        # More than the 8 MiB send buffer the writer asks for (the kernel doubles it): EMSGSIZE.
        big = "x" * (20 * 1024 * 1024)
        structlog.get_logger().warning("huge", blob=big)
        data, fds = receive(server)
        assert data == b""
        assert len(fds) == 1
        fd = fds[0]
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE
            assert seals & fcntl.F_SEAL_GROW
            size = os.fstat(fd).st_size
            payload = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        fields = as_dict(payload)
        assert fields["NICRECONCILED_EVENT"] == "huge"
        assert fields["BLOB"] == big
        assert fields["PRIORITY"] == "4"

    def test_without_journald_events_become_stderr_lines_and_nothing_raises(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        log.configure("journal", journal_socket=str(tmp_path / "gone.sock"))
        try:
            structlog.get_logger().bind(mac="0a:00:00:00:00:02").warning(
                "fetch_failed", error="x y"
            )
        finally:
            structlog.reset_defaults()
        err = capsys.readouterr().err
        assert err.endswith('[warning  ] fetch_failed mac=0a:00:00:00:00:02 error="x y"\n')

    def test_a_restarted_journald_is_found_again(self, tmp_path: Path) -> None:
        path = str(tmp_path / "journal.sock")
        writer = journal.Writer(path)
        try:
            assert not writer.send(b"MESSAGE=lost\n")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
                server.bind(path)
                assert writer.send(b"MESSAGE=back\n")
                assert server.recv(100) == b"MESSAGE=back\n"
        finally:
            writer.close()

    def test_a_journald_that_stopped_reading_costs_a_fallback_not_a_stall(
        self, tmp_path: Path
    ) -> None:
        path = str(tmp_path / "journal.sock")
        writer = journal.Writer(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(path)
            started = time.monotonic()
            sent = 0
            while sent < 100_000 and writer.send(b"MESSAGE=x\n"):
                sent += 1
            assert sent < 100_000  # the queue filled up, and send said so at once
            assert time.monotonic() - started < 5
        writer.close()
