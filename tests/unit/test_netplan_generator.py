"""netplan's generator is called directly (system/netplan.py), never the ``netplan generate``
front end, which from netplan 1.0 on reloads systemd and so has every netplan link
reconfigured (found on Debian 13 by the booted-container test of a foreign route)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from nicreconciled.config import parse
from nicreconciled.system import netplan
from nicreconciled.wiring import make_applier


def test_a_configured_generator_is_used_as_it_is() -> None:
    assert netplan.generate_command("/opt/netplan/generate") == ("/opt/netplan/generate",)


def test_the_first_installed_generator_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "lib" / "generate"
    second.parent.mkdir()
    second.write_text("#!/bin/sh\n")
    second.chmod(0o755)
    monkeypatch.setattr(netplan, "GENERATORS", (str(tmp_path / "libexec/generate"), str(second)))
    assert netplan.generate_command() == (str(second),)


def test_without_a_generator_the_front_end_is_used_and_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netplan, "GENERATORS", (str(tmp_path / "none"),))
    netplan._warn_front_end.cache_clear()
    with structlog.testing.capture_logs() as logs:
        assert netplan.generate_command() == ("netplan", "generate")
        assert netplan.generate_command() == ("netplan", "generate")
    assert [e["event"] for e in logs] == ["netplan_generator_not_found"]
    netplan._warn_front_end.cache_clear()


def test_this_hosts_generator_is_found() -> None:
    """Debian 12 and 13 ship it in /usr/libexec/netplan (netplan.io, which CI installs)."""
    (path,) = netplan.generate_command()
    assert path.endswith("/netplan/generate")


@pytest.mark.parametrize("backend", ["networkd", "NetworkManager"])
def test_the_netplan_appliers_run_the_generator(backend: str) -> None:
    config = parse({"renderer": "netplan", "netplan": {"backend": backend, "generator": "/g"}})
    applier = make_applier(config)
    assert applier is not None
    assert applier._generate_argv == ("/g",)  # type: ignore[attr-defined]
