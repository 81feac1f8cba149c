"""Log format choice: the journal under systemd, console otherwise, JSON unchanged."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from nicreconciled import cli, log


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stderr").open("w") as f:
        yield f


def stream_id(f: TextIO) -> str:
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


class TestUnderSystemd:
    def test_journal_stream_naming_our_stderr_means_systemd(self, stream: TextIO) -> None:
        assert log.under_systemd({"JOURNAL_STREAM": stream_id(stream)}, stream)

    def test_journal_stream_naming_another_file_is_inherited_not_ours(
        self, stream: TextIO, tmp_path: Path
    ) -> None:
        with (tmp_path / "other").open("w") as other:
            assert not log.under_systemd({"JOURNAL_STREAM": stream_id(other)}, stream)

    @pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "a:b"])
    def test_missing_or_garbled_journal_stream_is_not_systemd(
        self, stream: TextIO, value: str
    ) -> None:
        assert not log.under_systemd({"JOURNAL_STREAM": value}, stream)
        assert not log.under_systemd({}, stream)

    def test_a_stream_without_a_descriptor_is_not_the_journal(self) -> None:
        class NoFd:
            def fileno(self) -> int:
                raise OSError("no descriptor")

        assert not log.under_systemd({"JOURNAL_STREAM": "1:2"}, NoFd())  # type: ignore[arg-type]


class TestResolve:
    def test_auto_is_the_journal_when_stderr_is_the_journal_stream(
        self, stream: TextIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "stderr", stream)
        assert log.resolve("auto", {"JOURNAL_STREAM": stream_id(stream)}) == "journal"

    def test_auto_is_the_console_elsewhere(self) -> None:
        assert log.resolve("auto", {}) == "console"

    @pytest.mark.parametrize("fmt", ["console", "json", "journal"])
    def test_an_explicit_format_is_kept(self, fmt: log.Format) -> None:
        assert log.resolve(fmt, {}) == fmt

    def test_the_command_line_defaults_to_auto_and_offers_every_format(self) -> None:
        parser = cli._parser()
        assert parser.parse_args(["run"]).log_format == "auto"
        for fmt in ("auto", "console", "json", "journal"):
            assert parser.parse_args(["--log-format", fmt, "run"]).log_format == fmt


class TestRendering:
    def test_json_lines_keep_their_shape(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert log.configure("json") == "json"
        structlog.get_logger().bind(mac="0a:00:00:00:00:02").info("ready", nics=1)
        (line,) = capsys.readouterr().err.splitlines()
        event = json.loads(line)
        assert set(event) == {"mac", "nics", "event", "level", "timestamp"}
        assert event["event"] == "ready"
        assert event["level"] == "info"
        assert isinstance(event["timestamp"], float)

    def test_console_lines_stay_readable(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert log.configure("console", logging.DEBUG, env={}) == "console"
        structlog.get_logger().debug("poll", mac="0a:00:00:00:00:02")
        line = capsys.readouterr().err
        assert "[debug    ] poll" in line
        assert "mac=0a:00:00:00:00:02" in line
        assert line[:4].isdigit()  # ISO timestamp first

    def test_the_level_filter_applies_to_the_journal_too(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        log.configure("journal", logging.INFO, journal_socket=str(tmp_path / "gone"))
        structlog.get_logger().debug("hidden")
        structlog.get_logger().info("shown")
        err = capsys.readouterr().err
        assert "hidden" not in err
        assert "shown" in err
