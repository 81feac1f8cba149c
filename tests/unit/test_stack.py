"""renderer = "auto": what the host's files say about its network stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog.testing

from nicreconciled import config, wiring
from nicreconciled.system import stack
from nicreconciled.system.stack import detect_renderer


def tree(tmp_path: Path, *paths: str) -> Path:
    for path in paths:
        target = tmp_path / path
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("network: {version: 2}\n")
    return tmp_path


@pytest.fixture
def netplan_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack.shutil, "which", lambda name: f"/usr/sbin/{name}")


class TestDetectRenderer:
    def test_netplan_with_a_configuration_wins(
        self, tmp_path: Path, netplan_installed: None
    ) -> None:
        root = tree(tmp_path, "etc/netplan/50-cloud-init.yaml", "run/NetworkManager/")
        name, why = detect_renderer(root)
        assert name == "netplan"
        assert "50-cloud-init.yaml" in why

    def test_netplan_without_a_configuration_is_not_the_owner(
        self, tmp_path: Path, netplan_installed: None
    ) -> None:
        root = tree(tmp_path, "etc/netplan/", "run/NetworkManager/", "run/systemd/netif/")
        assert detect_renderer(root)[0] == "networkmanager"

    def test_a_configuration_without_netplan_installed_is_not_enough(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stack.shutil, "which", lambda name: None)
        root = tree(tmp_path, "etc/netplan/50-cloud-init.yaml", "run/systemd/netif/")
        assert detect_renderer(root) == ("networkd", "systemd-networkd runs (/run/systemd/netif)")

    def test_nothing_running_falls_back_to_netplan(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stack.shutil, "which", lambda name: None)
        assert detect_renderer(tmp_path)[0] == "netplan"


class TestResolve:
    def test_auto_is_the_default_and_is_resolved_and_logged(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stack.shutil, "which", lambda name: None)
        tree(tmp_path, "run/systemd/netif/")
        assert config.Config().renderer == "auto"
        with structlog.testing.capture_logs() as logs:
            resolved = wiring.resolve_renderer(config.Config(), tmp_path)
        assert resolved.renderer == "networkd"
        assert resolved.effective_output_dir == Path("/run/systemd/network")
        (event,) = [e for e in logs if e["event"] == "renderer_selected"]
        assert event["renderer"] == "networkd"

    def test_a_pinned_renderer_is_kept(self, tmp_path: Path) -> None:
        pinned = config.parse({"renderer": "networkmanager"})
        assert wiring.resolve_renderer(pinned, tmp_path) is pinned
