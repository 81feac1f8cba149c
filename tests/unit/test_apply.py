"""Appliers: the exact commands, in order, for one NIC; the first failure stops the sequence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from nicreconciled.apply import (
    TIMEOUT,
    Applier,
    NetplanNetworkdApplier,
    NetplanNetworkManagerApplier,
    NetworkManagerApplier,
    netplan_nm_connection_id,
)
from nicreconciled.errors import ApplyError
from nicreconciled.render.networkmanager import NetworkManagerRenderer, connection_uuid
from nicreconciled.system.proc import Completed

MAC = "0a:1b:2c:3d:4e:5f"
KEY = "0a1b2c3d4e5f"
UUID = connection_uuid(MAC)


class RecordingRunner:
    """Stands in for ``proc.run``: records every argv; fails the commands it is told to."""

    def __init__(self, fail: str | None = None, returncode: int = 1) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.timeouts: list[float] = []
        self.fail = fail
        self.returncode = returncode

    async def __call__(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        args = tuple(argv)
        self.calls.append(args)
        self.timeouts.append(timeout)
        if self.fail is not None and " ".join(args).startswith(self.fail):
            return Completed(args, self.returncode, "", "Error: something went wrong\n")
        return Completed(args, 0, "", "")


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """Our keyfile for MAC, as the reconciler leaves it before calling apply."""
    path = tmp_path / NetworkManagerRenderer().filename(MAC)
    path.write_text("[connection]\n", encoding="utf-8")
    return path


class TestProtocol:
    def test_every_applier_satisfies_the_protocol(self, tmp_path: Path) -> None:
        appliers: list[Applier] = [
            NetplanNetworkdApplier(RecordingRunner()),
            NetworkManagerApplier(RecordingRunner()),
            NetplanNetworkManagerApplier(RecordingRunner(), connections_dir=tmp_path),
        ]
        assert len(appliers) == 3


class TestNetplanNetworkdApplier:
    async def test_it_generates_reloads_and_reconfigures_only_this_nic(
        self, tmp_path: Path
    ) -> None:
        runner = RecordingRunner()
        await NetplanNetworkdApplier(runner).apply(mac=MAC, path=tmp_path / "x", ifname="ens6")
        assert runner.calls == [
            ("netplan", "generate"),
            ("networkctl", "reload"),
            ("networkctl", "reconfigure", "ens6"),
        ]

    async def test_a_gone_nic_is_not_reconfigured(self, tmp_path: Path) -> None:
        runner = RecordingRunner()
        await NetplanNetworkdApplier(runner).apply(mac=MAC, path=tmp_path / "x", ifname=None)
        assert runner.calls == [("netplan", "generate"), ("networkctl", "reload")]

    async def test_a_failing_generate_raises_and_stops(self, tmp_path: Path) -> None:
        runner = RecordingRunner(fail="netplan generate")
        with pytest.raises(ApplyError, match="netplan generate exited 1"):
            await NetplanNetworkdApplier(runner).apply(mac=MAC, path=tmp_path / "x", ifname="e")
        assert runner.calls == [("netplan", "generate")]


class TestNetworkManagerApplier:
    async def test_a_written_file_is_loaded_then_its_profile_brought_up_by_uuid(
        self, keyfile: Path
    ) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert runner.calls == [
            ("nmcli", "connection", "load", str(keyfile)),
            ("nmcli", "--wait", "0", "connection", "up", "uuid", UUID),
        ]

    async def test_the_interface_name_is_never_passed_to_nmcli(self, keyfile: Path) -> None:
        # The profile is bound by MAC; a name could be stale after a udev rename.
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="eth1")
        assert not any("eth1" in call for call in runner.calls)
        assert not any("ifname" in call for call in runner.calls)

    async def test_the_uuid_is_the_one_in_the_rendered_profile(self, keyfile: Path) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC.upper(), path=keyfile, ifname="e")
        assert runner.calls[-1][-1] == UUID

    async def test_without_the_nic_the_file_is_only_loaded(self, keyfile: Path) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname=None)
        assert runner.calls == [("nmcli", "connection", "load", str(keyfile))]

    @pytest.mark.parametrize("ifname", ["ens6", None])
    async def test_a_removed_file_is_only_loaded_so_networkmanager_forgets_it(
        self, tmp_path: Path, ifname: str | None
    ) -> None:
        runner = RecordingRunner()
        gone = tmp_path / NetworkManagerRenderer().filename(MAC)
        await NetworkManagerApplier(runner).apply(mac=MAC, path=gone, ifname=ifname)
        assert runner.calls == [("nmcli", "connection", "load", str(gone))]

    async def test_a_global_reload_is_never_used(self, keyfile: Path) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert ("nmcli", "connection", "reload") not in runner.calls

    async def test_a_failing_load_raises_and_nothing_is_activated(self, keyfile: Path) -> None:
        runner = RecordingRunner(fail="nmcli connection load")
        with pytest.raises(ApplyError, match=r"nmcli connection load .* exited 1: Error: some"):
            await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert runner.calls == [("nmcli", "connection", "load", str(keyfile))]

    async def test_a_failing_activation_raises(self, keyfile: Path) -> None:
        runner = RecordingRunner(fail="nmcli --wait 0 connection up", returncode=4)
        with pytest.raises(ApplyError, match="exited 4"):
            await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert len(runner.calls) == 2

    async def test_a_missing_nmcli_is_an_apply_error(self, keyfile: Path) -> None:
        runner = RecordingRunner(fail="nmcli", returncode=127)
        with pytest.raises(ApplyError, match="exited 127"):
            await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")

    async def test_every_command_gets_the_apply_timeout(self, keyfile: Path) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert runner.timeouts == [TIMEOUT, TIMEOUT]


class TestNetplanNetworkManagerApplier:
    @pytest.fixture
    def generated(self, tmp_path: Path) -> Path:
        """The keyfile ``netplan generate`` would have written for our definition."""
        path = tmp_path / f"netplan-nicr-{KEY}.nmconnection"
        path.write_text("[connection]\n", encoding="utf-8")
        return path

    def test_the_profile_id_is_netplans_name_for_our_definition(self) -> None:
        assert netplan_nm_connection_id("0A-1B-2C-3D-4E-5F") == f"netplan-nicr-{KEY}"

    async def test_it_generates_then_loads_only_our_keyfile_then_brings_it_up(
        self, tmp_path: Path, generated: Path
    ) -> None:
        runner = RecordingRunner()
        applier = NetplanNetworkManagerApplier(runner, connections_dir=tmp_path)
        await applier.apply(mac=MAC, path=tmp_path / "ignored.yaml", ifname="ens6")
        assert runner.calls == [
            ("netplan", "generate"),
            ("nmcli", "connection", "load", str(generated)),
            ("nmcli", "--wait", "0", "connection", "up", "id", f"netplan-nicr-{KEY}"),
        ]

    async def test_without_the_nic_nothing_is_brought_up(
        self, tmp_path: Path, generated: Path
    ) -> None:
        runner = RecordingRunner()
        applier = NetplanNetworkManagerApplier(runner, connections_dir=tmp_path)
        await applier.apply(mac=MAC, path=tmp_path / "x.yaml", ifname=None)
        assert runner.calls == [
            ("netplan", "generate"),
            ("nmcli", "connection", "load", str(generated)),
        ]

    async def test_after_a_removal_the_deleted_keyfile_is_loaded_and_nothing_activated(
        self, tmp_path: Path
    ) -> None:
        # netplan generate deleted netplan-nicr-KEY.nmconnection along with our YAML.
        runner = RecordingRunner()
        applier = NetplanNetworkManagerApplier(runner, connections_dir=tmp_path)
        await applier.apply(mac=MAC, path=tmp_path / "x.yaml", ifname="ens6")
        gone = tmp_path / f"netplan-nicr-{KEY}.nmconnection"
        assert runner.calls == [("netplan", "generate"), ("nmcli", "connection", "load", str(gone))]

    async def test_a_failing_generate_raises_and_stops(
        self, tmp_path: Path, generated: Path
    ) -> None:
        runner = RecordingRunner(fail="netplan generate")
        applier = NetplanNetworkManagerApplier(runner, connections_dir=tmp_path)
        with pytest.raises(ApplyError, match="netplan generate exited 1"):
            await applier.apply(mac=MAC, path=tmp_path / "x.yaml", ifname="ens6")
        assert runner.calls == [("netplan", "generate")]

    async def test_a_failing_load_raises_and_stops(self, tmp_path: Path, generated: Path) -> None:
        runner = RecordingRunner(fail="nmcli connection load")
        applier = NetplanNetworkManagerApplier(runner, connections_dir=tmp_path)
        with pytest.raises(ApplyError):
            await applier.apply(mac=MAC, path=tmp_path / "x.yaml", ifname="ens6")
        assert [c[:2] for c in runner.calls] == [("netplan", "generate"), ("nmcli", "connection")]

    def test_the_default_directory_is_where_netplan_writes_keyfiles(self) -> None:
        applier = NetplanNetworkManagerApplier(RecordingRunner())
        assert applier._dir == Path("/run/NetworkManager/system-connections")
