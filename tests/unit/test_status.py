"""Status files: the shared enums, hostile entries, deletion and pruning, and one summary line
for STATUS= and ``nicreconciled status``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nicreconciled import cli
from nicreconciled.status import (
    Bucket,
    DaemonPhase,
    DaemonStatus,
    Managed,
    NicPhase,
    NicStatus,
    StatusStore,
    bucket,
    parse_nic,
    summary,
)
from tests.unit.test_reconciler import MAC, ScriptedSource, make, state, until

NAME = "0a0000000002.json"


@pytest.fixture
def store(tmp_path: Path) -> StatusStore:
    return StatusStore(tmp_path / "state")


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


class TestValues:
    def test_the_json_values_are_the_documented_ones(self) -> None:
        assert [p.value for p in NicPhase] == [
            "converging", "converged", "waiting", "deadline", "failing", "removed", "drifting",
        ]  # fmt: skip
        assert [m.value for m in Managed] == [
            "pending", "managed", "unlisted", "primary", "foreign", "excluded", "removed",
        ]  # fmt: skip
        assert [p.value for p in DaemonPhase] == ["detecting", "running"]

    def test_a_status_file_holds_plain_strings_and_reads_back_as_enums(
        self, store: StatusStore
    ) -> None:
        saved = NicStatus(
            mac=MAC,
            phase=NicPhase.WAITING,
            managed=Managed.EXCLUDED,
            managed_detail="exclude_macs",
        )
        assert store.save(saved)
        raw = json.loads((store.directory / NAME).read_text())
        assert (raw["phase"], raw["managed"], raw["managed_detail"]) == (
            "waiting",
            "excluded",
            "exclude_macs",
        )
        loaded = store.load(MAC)
        assert loaded == saved
        assert loaded is not None
        assert loaded.phase is NicPhase.WAITING
        assert loaded.managed_text == "excluded: exclude_macs"
        assert not store.save(saved)  # unchanged: not rewritten

    def test_free_text_written_by_earlier_versions_is_understood(self) -> None:
        old = {"mac": MAC, "phase": "converged", "managed": "unknown to metadata"}
        assert parse_nic(json.dumps(old)).managed is Managed.UNLISTED
        old["managed"] = "primary (manage_primary = false)"
        primary = parse_nic(json.dumps(old))
        assert primary.managed_text == "primary: manage_primary = false"

    @pytest.mark.parametrize(
        "text",
        [
            "{",
            "[]",
            '"converged"',
            '{"mac": "0a:00:00:00:00:02", "phase": "sleeping"}',
            '{"mac": "0a:00:00:00:00:02", "managed": "maybe"}',
            '{"mac": "0a:00:00:00:00:02", "waiting_on": "ipv6"}',
            '{"mac": "0a:00:00:00:00:02", "ifname": 5}',
            '{"mac": "not a mac"}',
            '{"mac": "0a:00:00:00:00:02", "managed": ["x"]}',
            '{"phase": "converged"}',
        ],
    )
    def test_garbage_is_refused_with_a_value_error(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"."):  # any reason: it is not ours
            parse_nic(text)


class TestSummary:
    def test_each_phase_falls_in_one_bucket(self) -> None:
        assert {p: bucket(NicStatus(mac=MAC, phase=p)) for p in NicPhase} == {
            NicPhase.CONVERGING: Bucket.WAITING,
            NicPhase.CONVERGED: Bucket.CONVERGED,
            NicPhase.WAITING: Bucket.WAITING,
            NicPhase.DEADLINE: Bucket.WAITING,
            NicPhase.FAILING: Bucket.FAILING,
            NicPhase.REMOVED: Bucket.CONVERGED,
            NicPhase.DRIFTING: Bucket.FAILING,
        }

    def test_the_line_counts_nics_managed_ones_and_buckets_but_not_removed_ones(self) -> None:
        rows = [
            NicStatus(mac="0a:00:00:00:00:01", phase=NicPhase.CONVERGED, managed=Managed.MANAGED),
            NicStatus(mac="0a:00:00:00:00:02", phase=NicPhase.CONVERGED, managed=Managed.FOREIGN),
            NicStatus(mac="0a:00:00:00:00:03", phase=NicPhase.WAITING, managed=Managed.MANAGED),
            NicStatus(mac="0a:00:00:00:00:04", phase=NicPhase.FAILING, managed=Managed.MANAGED),
            NicStatus(mac="0a:00:00:00:00:05", phase=NicPhase.CONVERGING),
            NicStatus(mac="0a:00:00:00:00:06", phase=NicPhase.REMOVED, managed=Managed.REMOVED),
        ]
        assert summary(rows) == "5 NICs (3 managed): 2 converged, 2 waiting, 1 failing"
        assert summary([]) == "0 NICs (0 managed): 0 converged, 0 waiting, 0 failing"


class TestHostileEntries:
    def test_a_symlink_in_place_of_a_status_file_is_replaced_never_followed(
        self, tmp_path: Path, store: StatusStore
    ) -> None:
        target = victim(tmp_path)
        store.directory.mkdir(parents=True)
        (store.directory / NAME).symlink_to(target)
        with capture_logs() as logs:
            assert store.save(NicStatus(mac=MAC))
            store.save(NicStatus(mac=MAC, phase=NicPhase.CONVERGED))
        assert target.read_text() == "precious\n"
        assert not (store.directory / NAME).is_symlink()
        assert store.load(MAC) == NicStatus(mac=MAC, phase=NicPhase.CONVERGED)
        replaced = [e for e in logs if e["event"] == "status_file_replaced"]
        assert len(replaced) == 1, logs  # once: the second save finds our own file
        assert replaced[0]["found"] == "symlink"
        assert replaced[0]["mac"] == MAC

    def test_a_symlink_to_a_directory_is_unlinked_not_descended(
        self, tmp_path: Path, store: StatusStore
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep").write_text("x")
        store.directory.mkdir(parents=True)
        (store.directory / NAME).symlink_to(outside)
        store.save(NicStatus(mac=MAC))
        assert (outside / "keep").read_text() == "x"
        assert (store.directory / NAME).is_file()

    def test_an_empty_directory_is_removed_and_a_full_one_moved_aside(
        self, store: StatusStore
    ) -> None:
        (store.directory / NAME).mkdir(parents=True)
        store.save(NicStatus(mac=MAC))
        assert (store.directory / NAME).is_file()
        other = "0a0000000003.json"
        (store.directory / other / "sub").mkdir(parents=True)
        (store.directory / other / "sub" / "data").write_text("theirs")
        with capture_logs() as logs:
            store.save(NicStatus(mac="0a:00:00:00:00:03"))
        (event,) = [e for e in logs if e["event"] == "status_file_replaced"]
        aside = store.directory / event["moved_to"]
        assert (aside / "sub" / "data").read_text() == "theirs"
        assert (store.directory / other).is_file()
        # Moved aside out of the status files' way: nothing reads it as one.
        assert sorted(s.mac for s in store.load_all()) == [MAC, "0a:00:00:00:00:03"]

    def test_a_fifo_or_a_socket_is_replaced(self, tmp_path: Path, store: StatusStore) -> None:
        store.directory.mkdir(parents=True)
        os.mkfifo(store.directory / NAME)
        store.save(NicStatus(mac=MAC))
        assert store.load(MAC) == NicStatus(mac=MAC)
        other = "0a0000000003.json"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(store.directory / other))
            store.save(NicStatus(mac="0a:00:00:00:00:03"))
        assert (store.directory / other).is_file()

    def test_garbage_json_is_overwritten(self, store: StatusStore) -> None:
        store.directory.mkdir(parents=True)
        (store.directory / NAME).write_text("{garbage")
        assert store.load(MAC) is None
        store.save(NicStatus(mac=MAC))
        assert store.load(MAC) == NicStatus(mac=MAC)

    def test_reading_skips_what_is_not_a_status_file_of_its_own_name(
        self, tmp_path: Path, store: StatusStore
    ) -> None:
        store.save(NicStatus(mac=MAC))
        d = store.directory
        (d / "0a0000000003.json").symlink_to(victim(tmp_path))
        (d / "0a0000000004.json").mkdir()
        (d / "0a0000000005.json").write_text("[1, 2]")
        (d / "0a0000000006.json").write_text(json.dumps({"mac": MAC}))  # not its own name
        (d / "notes.json").write_text(json.dumps({"mac": "0a:00:00:00:00:07"}))
        assert [s.mac for s in store.load_all()] == [MAC]
        assert store.load("0a:00:00:00:00:03") is None
        assert store.load("0a:00:00:00:00:06") is None

    def test_the_daemon_file_is_replaced_too(self, tmp_path: Path, store: StatusStore) -> None:
        target = victim(tmp_path)
        store.directory.parent.mkdir(parents=True)
        (store.directory.parent / "daemon.json").symlink_to(target)
        assert store.load_daemon() is None
        store.save_daemon(DaemonStatus(DaemonPhase.RUNNING, "cloud ec2", "ec2"))
        assert target.read_text() == "precious\n"
        loaded = store.load_daemon()
        assert loaded == DaemonStatus(DaemonPhase.RUNNING, "cloud ec2", "ec2")
        assert loaded is not None
        assert loaded.phase is DaemonPhase.RUNNING


class TestDeleteAndAges:
    def test_delete_removes_the_file_or_whatever_stands_in_its_place(
        self, tmp_path: Path, store: StatusStore
    ) -> None:
        store.save(NicStatus(mac=MAC))
        assert store.delete(MAC)
        assert not store.delete(MAC)
        target = victim(tmp_path)
        (store.directory / NAME).symlink_to(target)
        assert store.delete(MAC)
        assert not (store.directory / NAME).is_symlink()
        assert target.read_text() == "precious\n"

    def test_ages_come_from_the_mtime_of_each_status_file(self, store: StatusStore) -> None:
        store.save(NicStatus(mac=MAC))
        store.save(NicStatus(mac="0a:00:00:00:00:03"))
        day_ago = time.time() - 86400
        os.utime(store.directory / "0a0000000003.json", (day_ago, day_ago))
        (store.directory / "notes.json").write_text("{}")
        ages = dict(store.ages())
        assert set(ages) == {MAC, "0a:00:00:00:00:03"}
        assert ages[MAC] < 60
        assert 86390 < ages["0a:00:00:00:00:03"] < 86500

    def test_a_missing_directory_has_no_files(self, store: StatusStore) -> None:
        assert list(store.ages()) == []
        assert store.load_all() == []
        assert not store.delete(MAC)


class TestReconcilerStatus:
    """What the reconciler records: one phase per pass, the file deleted once removed."""

    async def run(self, rec_task: asyncio.Task[None]) -> None:
        rec_task.cancel()
        await asyncio.gather(rec_task, return_exceptions=True)

    async def test_a_symlink_in_place_of_the_status_file_does_not_stop_the_loop(
        self, tmp_path: Path
    ) -> None:
        target = victim(tmp_path)
        nics = tmp_path / "state" / "nics"
        nics.mkdir(parents=True)
        (nics / NAME).symlink_to(target)
        rec = make(tmp_path, ScriptedSource(state()))
        with capture_logs() as logs:
            task = asyncio.create_task(rec.run())
            await until(lambda: rec.settled and (nics / NAME).is_file())
            await asyncio.sleep(0.2)  # several more passes: no crash, nothing logged again
            assert not task.done()
            await self.run(task)
        assert target.read_text() == "precious\n"
        assert [e["event"] for e in logs].count("status_file_replaced") == 1
        assert "status_write_failed" not in [e["event"] for e in logs]
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.phase is NicPhase.CONVERGED

    async def test_a_removed_nic_leaves_no_status_file(self, tmp_path: Path) -> None:
        source = ScriptedSource(state())
        rec = make(tmp_path, source)
        task = asyncio.create_task(rec.run())
        status_file = tmp_path / "state" / "nics" / NAME
        await until(status_file.exists)
        rec.set_link(None)
        source.answer = None
        rec.kick(new_episode=True)
        await asyncio.wait_for(task, 3)
        assert rec.removed
        assert rec.status.phase is NicPhase.REMOVED
        assert not status_file.exists()

    async def test_a_nic_the_metadata_does_not_list_is_converged_and_says_why(
        self, tmp_path: Path
    ) -> None:
        rec = make(tmp_path, ScriptedSource(None))
        task = asyncio.create_task(rec.run())
        await until(lambda: rec.status.phase is NicPhase.CONVERGED)
        await self.run(task)
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.managed_text == "unlisted: the metadata does not list this MAC"
        assert bucket(saved) is Bucket.CONVERGED

    async def test_an_excluded_device_number_is_never_written(self, tmp_path: Path) -> None:
        rec = make(tmp_path, ScriptedSource(state()))
        rec.ctx.exclude_device_numbers = ((1, 3),)
        task = asyncio.create_task(rec.run())
        await until(lambda: rec.status.phase is NicPhase.CONVERGED)
        await asyncio.sleep(0.1)
        await self.run(task)
        assert not (tmp_path / "out").exists()
        saved = StatusStore(tmp_path / "state").load(MAC)
        assert saved is not None
        assert saved.managed is Managed.EXCLUDED
        assert saved.managed_detail == "exclude_device_numbers 1-3"

    async def test_a_failing_write_is_failing_until_it_works(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        (out / "90-nicreconciled-0a0000000002.yaml").symlink_to(victim(tmp_path))
        rec = make(tmp_path, ScriptedSource(state()))
        task = asyncio.create_task(rec.run())
        await until(lambda: rec.status.phase is NicPhase.FAILING)
        assert summary([rec.status]) == "1 NICs (0 managed): 0 converged, 0 waiting, 1 failing"
        (out / "90-nicreconciled-0a0000000002.yaml").unlink()
        await until(lambda: rec.status.phase is NicPhase.CONVERGED)
        await self.run(task)
        assert summary([rec.status]) == "1 NICs (1 managed): 1 converged, 0 waiting, 0 failing"


class TestStatusCommand:
    def write_config(self, tmp_path: Path) -> Path:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'state_dir = "{tmp_path / "state"}"\napply = false\n')
        return cfg

    def test_it_prints_the_summary_line_and_why_nics_are_not_managed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store = StatusStore(tmp_path / "state")
        store.save_daemon(DaemonStatus(DaemonPhase.RUNNING, "cloud ec2", "ec2"))
        store.save(NicStatus(mac=MAC, ifname="eth1", phase=NicPhase.CONVERGED,
                             managed=Managed.MANAGED))  # fmt: skip
        store.save(
            NicStatus(
                mac="0a:00:00:00:00:03",
                ifname="eth2",
                phase=NicPhase.CONVERGED,
                managed=Managed.FOREIGN,
                managed_detail="ID_NET_MANAGED_BY=org.freedesktop.NetworkManager",
            )
        )
        (store.directory / "0a0000000004.json").symlink_to(victim(tmp_path))
        assert cli.main(["--config", str(self.write_config(tmp_path)), "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "daemon: running: cloud ec2"
        assert lines[1] == "NICs: 2 NICs (1 managed): 2 converged, 0 waiting, 0 failing"
        assert "foreign: ID_NET_MANAGED_BY=org.freedesktop.NetworkManager" in lines[4]
        assert len(lines) == 5  # header + 2 rows; the symlink is skipped, not followed

    def test_json_holds_the_enum_values(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        StatusStore(tmp_path / "state").save(
            NicStatus(mac=MAC, managed=Managed.EXCLUDED, managed_detail="exclude_macs")
        )
        assert cli.main(["--config", str(self.write_config(tmp_path)), "status", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert (row["phase"], row["managed"], row["managed_detail"]) == (
            "converging",
            "excluded",
            "exclude_macs",
        )
