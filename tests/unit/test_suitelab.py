"""The pure parts of scripts/suite-lab (tests/suitelab.py): sources, keys, version checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import suitelab

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = f"""Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: {KEYRING}

Types: deb deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Enabled: no

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
"""


class TestMirrorLines:
    def test_the_hosts_release_is_mapped_to_the_suite_with_its_pockets(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "debian.sources").write_text(SOURCES)
        signed = f"[signed-by={KEYRING}]"
        assert suitelab.mirror_lines("trixie", "bookworm", tmp_path) == [
            f"deb {signed} http://deb.debian.org/debian trixie main contrib",
            f"deb {signed} http://deb.debian.org/debian trixie-updates main contrib",
            f"deb {signed} http://deb.debian.org/debian-security trixie-security main",
        ]

    def test_entries_that_name_the_suite_are_taken_as_they_are(self, tmp_path: Path) -> None:
        text = "Types: deb\nURIs: http://m.example/debian\nSuites: trixie bookworm\n"
        (tmp_path / "a.sources").write_text(text)
        assert suitelab.mirror_lines("trixie", "bookworm", tmp_path) == [
            "deb http://m.example/debian trixie main"
        ]

    def test_other_releases_are_left_out(self, tmp_path: Path) -> None:
        text = "Types: deb\nURIs: http://m.example/debian\nSuites: bullseye sid\n"
        (tmp_path / "a.sources").write_text(text)
        assert suitelab.mirror_lines("trixie", "bookworm", tmp_path) == []


class TestKeys:
    def test_the_root_key_covers_suite_and_packages_not_their_order(self) -> None:
        key = suitelab.root_key("trixie")
        assert suitelab.root_key("trixie", tuple(reversed(suitelab.PACKAGES))) == key
        assert suitelab.root_key("bookworm") != key
        assert suitelab.root_key("trixie", (*suitelab.PACKAGES, "vim")) != key

    def test_the_venv_key_follows_the_root_and_the_requirements(self) -> None:
        reqs = suitelab.requirements()
        assert any(r.startswith("pytest") for r in reqs)
        key = suitelab.venv_key("a", reqs)
        assert suitelab.venv_key("b", reqs) != key
        assert suitelab.venv_key("a", [*reqs, "x"]) != key


TRIXIE = {
    "systemd-networkd": "257",
    "NetworkManager": "1.52.1",
    "netplan.io": "1.1.2-7",
    "dnsmasq": "2.91",
    "Python": "3.13.5",
}


class TestVersions:
    def test_the_suites_own_stack_passes(self) -> None:
        assert suitelab._check_versions(TRIXIE, suitelab.SUITES["trixie"]) == []

    @pytest.mark.parametrize(
        ("name", "version"),
        [("systemd-networkd", "252"), ("NetworkManager", "1.42.4"), ("netplan.io", "0.106-2")],
    )
    def test_another_releases_binary_is_named(self, name: str, version: str) -> None:
        wrong = suitelab._check_versions({**TRIXIE, name: version}, suitelab.SUITES["trixie"])
        assert len(wrong) == 1
        assert wrong[0].startswith(f"{name} {version} is not trixie's")
