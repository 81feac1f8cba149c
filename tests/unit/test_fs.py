"""Atomic, owned, symlink-refusing file writes."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from nicreconciled.errors import UnsafePathError
from nicreconciled.system import fs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestWriteIfChanged:
    def test_a_new_file_is_written_with_mode_0600(self, tmp_path: Path) -> None:
        assert fs.write_if_changed(tmp_path / "out", "90-nicreconciled-a.yaml", "x: 1\n")
        target = tmp_path / "out" / "90-nicreconciled-a.yaml"
        assert target.read_text() == "x: 1\n"
        assert mode(target) == 0o600

    def test_the_umask_does_not_change_the_mode(self, tmp_path: Path) -> None:
        old = os.umask(0o077)
        try:
            fs.write_if_changed(tmp_path, "s.json", "{}", 0o644)
        finally:
            os.umask(old)
        assert mode(tmp_path / "s.json") == 0o644

    def test_identical_content_is_not_rewritten(self, tmp_path: Path) -> None:
        fs.write_if_changed(tmp_path, "f.yaml", "a\n")
        inode = (tmp_path / "f.yaml").stat().st_ino
        assert not fs.write_if_changed(tmp_path, "f.yaml", "a\n")
        assert (tmp_path / "f.yaml").stat().st_ino == inode

    def test_changed_content_replaces_the_file_atomically(self, tmp_path: Path) -> None:
        fs.write_if_changed(tmp_path, "f.yaml", "a\n")
        inode = (tmp_path / "f.yaml").stat().st_ino
        assert fs.write_if_changed(tmp_path, "f.yaml", "b\n")
        assert (tmp_path / "f.yaml").read_text() == "b\n"
        assert (tmp_path / "f.yaml").stat().st_ino != inode  # renamed over, not edited in place
        assert sorted(os.listdir(tmp_path)) == ["f.yaml"]  # no temp file left

    def test_a_wrong_mode_is_repaired_even_when_content_is_equal(self, tmp_path: Path) -> None:
        fs.write_if_changed(tmp_path, "f.yaml", "a\n")
        os.chmod(tmp_path / "f.yaml", 0o644)
        assert fs.write_if_changed(tmp_path, "f.yaml", "a\n")
        assert mode(tmp_path / "f.yaml") == 0o600

    def test_a_symlink_in_place_of_the_file_is_refused_and_not_followed(
        self, tmp_path: Path
    ) -> None:
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        (tmp_path / "f.yaml").symlink_to(victim)
        with pytest.raises(UnsafePathError, match="symlink"):
            fs.write_if_changed(tmp_path, "f.yaml", "evil\n")
        assert victim.read_text() == "precious\n"
        assert (tmp_path / "f.yaml").is_symlink()

    def test_a_directory_in_place_of_the_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "f.yaml").mkdir()
        with pytest.raises(UnsafePathError, match="not a regular file"):
            fs.write_if_changed(tmp_path, "f.yaml", "x\n")

    @pytest.mark.parametrize("name", ["", "../x", "a/b", ".", ".."])
    def test_names_that_could_leave_the_directory_are_refused(
        self, tmp_path: Path, name: str
    ) -> None:
        with pytest.raises(UnsafePathError):
            fs.write_if_changed(tmp_path, name, "x")

    def test_a_read_only_directory_raises_oserror_and_keeps_the_old_file(
        self, tmp_path: Path
    ) -> None:
        fs.write_if_changed(tmp_path, "f.yaml", "old\n")
        # root ignores permission bits, so make the target directory impossible instead:
        # its parent is a regular file.
        blocked = tmp_path / "file"
        blocked.write_text("")
        with pytest.raises(NotADirectoryError):
            fs.write_if_changed(blocked / "sub", "f.yaml", "new\n")
        assert (tmp_path / "f.yaml").read_text() == "old\n"


class TestRemoveAndList:
    def test_remove_deletes_a_regular_file_and_reports_it(self, tmp_path: Path) -> None:
        fs.write_if_changed(tmp_path, "f.yaml", "a")
        assert fs.remove_file(tmp_path, "f.yaml")
        assert not fs.remove_file(tmp_path, "f.yaml")

    def test_remove_refuses_a_symlink(self, tmp_path: Path) -> None:
        (tmp_path / "t").write_text("keep")
        (tmp_path / "f.yaml").symlink_to(tmp_path / "t")
        with pytest.raises(UnsafePathError):
            fs.remove_file(tmp_path, "f.yaml")
        assert (tmp_path / "t").read_text() == "keep"

    def test_listing_returns_only_owned_names(self, tmp_path: Path) -> None:
        for name in ("90-nicreconciled-a.yaml", "50-cloud-init.yaml", "90-nicreconciled-b.txt"):
            (tmp_path / name).write_text("")
        assert fs.list_names(tmp_path, "90-nicreconciled-", ".yaml") == ["90-nicreconciled-a.yaml"]
        assert fs.list_names(tmp_path / "missing", "x", ".yaml") == []

    def test_stale_temp_files_of_ours_are_cleaned_and_foreign_ones_kept(
        self, tmp_path: Path
    ) -> None:
        owned = re.compile(r"90-nicreconciled-[0-9a-f]{12}\.yaml")
        (tmp_path / "90-nicreconciled-0a0000000002.yaml.1234abcd.tmp").write_text("half")
        foreign = [
            "other.tmp",
            "90-nicreconciled-notes.tmp",
            "90-nicreconciled-0a0000000002.yaml.tmp",
            "90-nicreconciled-0a0000000002.yaml.XYZ.tmp",
        ]
        for name in foreign:
            (tmp_path / name).write_text("theirs")
        assert fs.remove_stale_temps(tmp_path, owned) == 1
        assert sorted(os.listdir(tmp_path)) == sorted(foreign)

    def test_a_temp_name_is_swept_by_the_pattern_of_its_file(self, tmp_path: Path) -> None:
        owned = re.compile(r"[0-9a-f]{12}\.json")
        (tmp_path / fs.temp_name("0a0000000002.json")).write_text("{")
        assert fs.remove_stale_temps(tmp_path, owned) == 1

    def test_read_file_returns_none_for_a_missing_file_or_directory(self, tmp_path: Path) -> None:
        assert fs.read_file(tmp_path, "nope") is None
        assert fs.read_file(tmp_path / "nodir", "nope") is None
