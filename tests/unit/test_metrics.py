"""The metrics sink (metrics.py): what the log tells becomes the textfile collector's file."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from nicreconciled import log as logsetup
from nicreconciled.metrics import OUTCOMES, Metrics
from nicreconciled.status import NicPhase
from tests.conftest import require_tool
from tests.unit.test_reconciler import MAC, ScriptedSource, make, state, until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition TEXT by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_every_series_is_there_from_the_start_with_zeros() -> None:
    text = Metrics(None).text()
    for phase in NicPhase:
        assert value(text, "nicreconciled_nics", phase=phase.value) == 0
    for outcome in OUTCOMES:
        assert value(text, "nicreconciled_metadata_requests_total", outcome=outcome) == 0
    assert value(text, "nicreconciled_applies_total", result="failed") == 0
    assert value(text, "nicreconciled_kernel_heals_total") == 0
    assert value(text, "nicreconciled_convergence_seconds_count") == 0
    assert "_created" not in text  # a restart's reset to 0 says when counting began


def test_the_events_the_log_tells_are_what_is_counted() -> None:
    m = Metrics(None, clock=lambda: 1_800_000_000.0)
    events: list[dict[str, Any]] = [
        {"event": "metadata_request", "outcome": "ok"},
        {"event": "metadata_request", "outcome": "ok"},
        {"event": "metadata_request", "outcome": "timeout"},
        {"event": "metadata_request", "outcome": "http_error"},
        {"event": "metadata_invalid", "error": "not JSON"},
        {"event": "applied", "file": "x"},
        {"event": "apply_failed", "error": "boom"},
        {"event": "heal", "missing": []},
        {"event": "kernel_drift", "missing": []},
        {"event": "converged", "took": 0.3},
        {"event": "converged", "took": 7.0},
        {"event": "poll"},  # not counted
    ]
    for event in events:
        m.sink(event)
    m.phases([NicPhase.CONVERGED, NicPhase.CONVERGED, NicPhase.FAILING])
    m.info("0.3.0", "ec2", "netplan")
    text = m.text()
    assert value(text, "nicreconciled_metadata_requests_total", outcome="ok") == 2
    assert value(text, "nicreconciled_metadata_requests_total", outcome="timeout") == 1
    assert value(text, "nicreconciled_metadata_requests_total", outcome="http_error") == 1
    assert value(text, "nicreconciled_metadata_requests_total", outcome="garbage") == 1
    assert value(text, "nicreconciled_applies_total", result="ok") == 1
    assert value(text, "nicreconciled_applies_total", result="failed") == 1
    assert value(text, "nicreconciled_kernel_heals_total") == 1
    assert value(text, "nicreconciled_drift_detected_total") == 1
    assert value(text, "nicreconciled_convergence_seconds_count") == 2
    assert value(text, "nicreconciled_convergence_seconds_bucket", le="0.5") == 1
    assert value(text, "nicreconciled_convergence_seconds_bucket", le="10.0") == 2
    assert value(text, "nicreconciled_last_converged_timestamp_seconds") == 1_800_000_000.0
    assert value(text, "nicreconciled_nics", phase="converged") == 2
    assert value(text, "nicreconciled_nics", phase="failing") == 1
    assert value(text, "nicreconciled_nics", phase="waiting") == 0
    info = {"version": "0.3.0", "cloud": "ec2", "renderer": "netplan"}
    assert value(text, "nicreconciled_info", **info) == 1


def test_promtool_accepts_the_file() -> None:
    require_tool("promtool")
    m = Metrics(None)
    m.sink({"event": "converged", "took": 1.0})
    m.info("0.3.0", "ec2", "netplan")
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=m.text(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""  # no lint warning either


class TestTheFile:
    def test_written_readable_by_node_exporter_and_atomic(self, tmp_path: Path) -> None:
        path = tmp_path / "nicreconciled.prom"
        m = Metrics(path)
        old = os.umask(0o077)  # the unit's UMask
        try:
            assert m.write()
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == 0o644
        assert path.read_text() == m.text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["nicreconciled.prom"]

    def test_a_missing_directory_is_said_once_not_created_and_retried(self, tmp_path: Path) -> None:
        directory = tmp_path / "node-exporter"
        m = Metrics(directory / "nicreconciled.prom")
        with structlog.testing.capture_logs() as logs:
            assert not m.write()
            assert not m.write()
            assert not directory.exists()
            directory.mkdir()
            assert m.write()
        names = [e["event"] for e in logs]
        assert names == ["metrics_write_failed", "metrics_write_recovered"]
        assert logs[0]["error"] == f"{directory}: No such file or directory"

        assert logs[0]["path"] == str(directory / "nicreconciled.prom")

    async def test_changes_are_written_at_most_once_a_second(self, tmp_path: Path) -> None:
        path = tmp_path / "nicreconciled.prom"
        m = Metrics(path)
        writer = asyncio.create_task(m.run())
        try:
            m.sink({"event": "applied"})
            await until(path.exists, 2)
            first = path.stat().st_mtime_ns
            for _ in range(20):
                m.sink({"event": "applied"})
            await until(lambda: "nicreconciled_applies_total{result=\"ok\"} 21.0" in
                        path.read_text(), 3)  # fmt: skip
            assert path.stat().st_mtime_ns != first
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


@pytest.fixture
def json_log(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """JSON lines to the captured stderr; structlog as it was afterwards (a logger left
    writing to capsys's stream would write to a closed file in later tests)."""
    saved, configured = structlog.get_config(), dict(logsetup._configured)
    logsetup.configure("json", logging.INFO)
    yield
    structlog.configure(**saved)
    logsetup._configured.clear()
    logsetup._configured.update(configured)


def test_the_sink_sees_debug_events_that_the_log_does_not_print(
    json_log: None, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Metrics(None)
    logsetup.add_sink(m.sink)
    try:
        structlog.get_logger("t").debug("metadata_request", outcome="ok")
        structlog.get_logger("t").info("applied", file="x")
    finally:
        logsetup.remove_sink(m.sink)
    err = capsys.readouterr().err
    assert "metadata_request" not in err
    assert '"applied"' in err
    text = m.text()
    assert value(text, "nicreconciled_metadata_requests_total", outcome="ok") == 1
    assert value(text, "nicreconciled_applies_total", result="ok") == 1


async def test_a_hot_plug_is_one_convergence_with_its_duration(tmp_path: Path) -> None:
    """The reconciler's ``converged``: once per episode, from its start to settled."""
    with structlog.testing.capture_logs() as logs:
        rec = make(tmp_path, ScriptedSource(state()))
        task = asyncio.create_task(rec.run())
        await until(lambda: any(e["event"] == "converged" for e in logs))
        rec.ctx.source.answer = state("10.0.1.5", "10.0.1.6")  # type: ignore[attr-defined]
        rec.kick()
        await until(lambda: len([e for e in logs if e["event"] == "converged"]) == 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    converged = [e for e in logs if e["event"] == "converged"]
    assert all(e["mac"] == MAC and 0 <= e["took"] < 2 for e in converged), converged


def test_the_daemon_does_not_load_prometheus_client_for_its_metrics() -> None:
    # Issue 22: prometheus_client's package brings its HTTP servers, gzip and collectors,
    # 1.4 MiB of resident memory for eight series; the exposition text is written here.
    import subprocess
    import sys

    code = (
        "import sys; from nicreconciled.metrics import Metrics; Metrics(None).text(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'wsgiref', 'http', 'gzip')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_values_and_labels_are_written_as_prometheus_reads_them() -> None:
    m = Metrics(None, clock=lambda: 1_800_000_000.0)
    m.info("1.0", 'e"c\\2', "net\nplan")
    m.sink({"event": "converged", "took": 700.0})
    text = m.text()
    # Go's exponent form for a large value; quotes, backslashes and newlines escaped.
    assert "nicreconciled_last_converged_timestamp_seconds 1.8e+09\n" in text
    assert 'cloud="e\\"c\\\\2"' in text
    assert 'renderer="net\\nplan"' in text
    assert (
        value(text, "nicreconciled_info", version="1.0", cloud='e"c\\2', renderer="net\nplan") == 1
    )
    assert value(text, "nicreconciled_convergence_seconds_bucket", le="600.0") == 0
    assert value(text, "nicreconciled_convergence_seconds_bucket", le="+Inf") == 1
    assert value(text, "nicreconciled_convergence_seconds_sum") == 700.0
