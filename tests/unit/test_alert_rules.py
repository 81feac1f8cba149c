"""The alerting rules an operator loads (contrib/prometheus/nicreconciled.rules.yml), checked
and unit-tested by Prometheus's own promtool (tests/prometheus/nicreconciled.rules.test.yml:
each alert firing where it must, and quiet where it must not)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib/prometheus/nicreconciled.rules.yml"
TESTS = REPO / "tests/prometheus/nicreconciled.rules.test.yml"


def promtool(*args: str) -> str:
    require_tool("promtool")
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid() -> None:
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", str(RULES))


def test_the_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", TESTS.name)


def test_every_metric_the_rules_use_is_one_the_daemon_writes() -> None:
    from nicreconciled.metrics import Metrics

    written = Metrics(None).text()
    for name in ("nicreconciled_nics", "nicreconciled_applies_total",
                 "nicreconciled_kernel_heals_total"):  # fmt: skip
        assert name in RULES.read_text()
        assert f"# TYPE {name.removesuffix('_total')}" in written
