"""Appliers: the exact commands, in order; only our NICs' files touched; one apply at a time.

The netplan appliers run the real ``netplan generate --root-dir`` (netplan.io is installed
by scripts/bootstrap); networkctl and nmcli are recorded, not run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from nicreconciled import apply_netplan, apply_nm
from nicreconciled.apply import TIMEOUT, Applier
from nicreconciled.apply_netplan import (
    NetplanNetworkdApplier,
    NetplanNetworkManagerApplier,
    netplan_nm_connection_id,
)
from nicreconciled.apply_nm import NetworkManagerApplier
from nicreconciled.errors import ApplyError
from nicreconciled.render.networkmanager import NetworkManagerRenderer, connection_uuid
from nicreconciled.system import proc
from nicreconciled.system.proc import Completed
from tests.conftest import require_tool

MAC = "0a:1b:2c:3d:4e:5f"
KEY = "0a1b2c3d4e5f"
UUID = connection_uuid(MAC)


class RecordingRunner:
    """Stands in for ``proc.run``: records every argv; fails the commands it is told to;
    runs the real ``netplan``; holds commands matching ``hold`` until ``release`` is set."""

    def __init__(self, fail: str | None = None, returncode: int = 1) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.timeouts: list[float] = []
        self.fail = fail
        self.returncode = returncode
        self.hold: str | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        #: NetworkManager's active profiles (``connection show --active``, kept out of
        #: ``calls``), and those a ``load`` auto-activates.
        self.active: set[str] = set()
        self.autoconnect: set[str] = set()
        self.queries = 0

    async def __call__(self, argv: Sequence[str], *, timeout: float = 30.0) -> Completed:
        args = tuple(argv)
        if args[-3:] == ("connection", "show", "--active"):
            self.queries += 1
            return Completed(args, 0, "".join(f"{a}\n" for a in sorted(self.active)), "")
        if args[:3] == ("nmcli", "connection", "load"):
            self.active |= self.autoconnect
        self.calls.append(args)
        self.timeouts.append(timeout)
        line = " ".join(args)
        if self.hold is not None and line.startswith(self.hold):
            self.hold = None
            self.held.set()
            await self.release.wait()
        if self.fail is not None and line.startswith(self.fail):
            return Completed(args, self.returncode, "", "Error: something went wrong\n")
        if args[0] == "netplan":
            return await proc.run(args, timeout=timeout)
        return Completed(args, 0, "", "")

    def commands(self) -> list[tuple[str, ...]]:
        """The calls with the scratch directory of ``--root-dir`` blanked out."""
        return [(*c[:3], "SCRATCH") if c[2:3] == ("--root-dir",) else c for c in self.calls]


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """Our keyfile for MAC, as the reconciler leaves it before calling apply."""
    path = tmp_path / NetworkManagerRenderer().filename(MAC)
    path.write_text("[connection]\n", encoding="utf-8")
    return path


GENERATE = ("netplan", "generate", "--root-dir", "SCRATCH")
OTHER = "0a:1b:2c:3d:4e:60"


def our_yaml(mac: str, backend: str = "networkd", address: str = "10.0.1.25/24") -> str:
    return (
        "network:\n  version: 2\n  ethernets:\n"
        f"    nicr-{mac.replace(':', '')}:\n"
        f"      match: {{macaddress: '{mac}'}}\n      renderer: {backend}\n"
        f"      dhcp4: true\n      addresses: [{address}]\n"
    )


FOREIGN = (
    "network:\n  version: 2\n  ethernets:\n    eth0:\n"
    "      match: {macaddress: '0a:00:00:00:00:01'}\n      set-name: eth0\n      dhcp4: true\n"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host tree: cloud-init's YAML for the primary NIC, its generated .network, our YAML."""
    require_tool("netplan")
    root = tmp_path / "root"
    for sub in ("etc/netplan", "run/netplan", "run/systemd/network"):
        (root / sub).mkdir(parents=True)
    (root / "etc/netplan/50-cloud-init.yaml").write_text(FOREIGN)
    (root / "run/systemd/network/10-netplan-eth0.network").write_text("[Match]\n")
    for path in (root / "etc/netplan/50-cloud-init.yaml",):
        path.chmod(0o600)
    write_ours(root, MAC)
    return root


def write_ours(root: Path, mac: str, **kw: str) -> Path:
    path = root / "run/netplan" / f"90-nicreconciled-{mac.replace(':', '')}.yaml"
    path.write_text(our_yaml(mac, **kw))
    path.chmod(0o600)
    return path


def networkd_files(root: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of every file in the live networkd directory."""
    live = root / "run/systemd/network"
    return {
        n: (st.st_ino, st.st_mtime_ns) for n in os.listdir(live) for st in [live.joinpath(n).stat()]
    }


class TestProtocol:
    def test_every_applier_satisfies_the_protocol(self, tmp_path: Path) -> None:
        appliers: list[Applier] = [
            NetplanNetworkdApplier(RecordingRunner()),
            NetworkManagerApplier(RecordingRunner()),
            NetplanNetworkManagerApplier(RecordingRunner(), root=tmp_path),
        ]
        assert len(appliers) == 3


class TestNetplanNetworkdApplier:
    async def test_it_generates_in_scratch_and_reloads_once_without_a_reconfigure(
        self, root: Path
    ) -> None:
        runner = RecordingRunner()
        applier = NetplanNetworkdApplier(runner, root=root)
        await applier.apply(mac=MAC, path=root / "run/netplan/x.yaml", ifname="ens6")
        assert runner.commands() == [GENERATE, ("networkctl", "reload")]
        assert not any("reconfigure" in c for c in runner.calls)

    async def test_only_our_nics_file_is_installed_and_other_files_are_untouched(
        self, root: Path
    ) -> None:
        before = networkd_files(root)
        await NetplanNetworkdApplier(RecordingRunner(), root=root).apply(
            mac=MAC, path=root / "x", ifname="ens6"
        )
        after = networkd_files(root)
        ours = f"10-netplan-nicr-{KEY}.network"
        assert set(after) == set(before) | {ours}  # no udev rules, no units, nothing else
        assert after["10-netplan-eth0.network"] == before["10-netplan-eth0.network"]
        text = (root / "run/systemd/network" / ours).read_text()
        assert "Address=10.0.1.25/24" in text
        assert (root / "run/systemd/network" / ours).stat().st_mode & 0o777 == 0o644
        assert not (root / "run/udev").exists()
        assert not (root / "run/systemd/system").exists()

    async def test_an_unchanged_file_keeps_its_inode_so_networkd_leaves_the_link_alone(
        self, root: Path
    ) -> None:
        applier = NetplanNetworkdApplier(RecordingRunner(), root=root)
        await applier.apply(mac=MAC, path=root / "x", ifname="ens6")
        first = networkd_files(root)
        write_ours(root, OTHER)  # another NIC changes; ours does not
        await applier.apply(mac=OTHER, path=root / "y", ifname="ens7")
        after = networkd_files(root)
        assert after[f"10-netplan-nicr-{KEY}.network"] == first[f"10-netplan-nicr-{KEY}.network"]
        assert f"10-netplan-nicr-{OTHER.replace(':', '')}.network" in after

    async def test_a_changed_file_is_replaced(self, root: Path) -> None:
        applier = NetplanNetworkdApplier(RecordingRunner(), root=root)
        await applier.apply(mac=MAC, path=root / "x", ifname="ens6")
        write_ours(root, MAC, address="10.0.1.26/24")
        await applier.apply(mac=MAC, path=root / "x", ifname="ens6")
        text = (root / "run/systemd/network" / f"10-netplan-nicr-{KEY}.network").read_text()
        assert "10.0.1.26/24" in text

    async def test_a_removed_nics_files_are_removed_and_networkd_reloaded(self, root: Path) -> None:
        runner = RecordingRunner()
        applier = NetplanNetworkdApplier(runner, root=root)
        await applier.apply(mac=MAC, path=root / "x", ifname="ens6")
        (root / "run/netplan" / f"90-nicreconciled-{KEY}.yaml").unlink()
        await applier.apply(mac=MAC, path=root / "x", ifname=None)
        assert set(networkd_files(root)) == {"10-netplan-eth0.network"}
        assert runner.commands()[-1] == ("networkctl", "reload")

    async def test_a_failing_generate_fails_every_nic_and_installs_nothing(
        self, root: Path
    ) -> None:
        runner = RecordingRunner(fail="netplan generate")
        with pytest.raises(ApplyError, match=r"netplan generate --root-dir .* exited 1"):
            await NetplanNetworkdApplier(runner, root=root).apply(
                mac=MAC, path=root / "x", ifname="e"
            )
        assert runner.commands() == [GENERATE]
        assert set(networkd_files(root)) == {"10-netplan-eth0.network"}

    async def test_invalid_yaml_is_the_error_netplan_gives(self, root: Path) -> None:
        (root / "run/netplan" / f"90-nicreconciled-{KEY}.yaml").write_text("network: [\n")
        with pytest.raises(ApplyError, match="netplan generate"):
            await NetplanNetworkdApplier(RecordingRunner(), root=root).apply(
                mac=MAC, path=root / "x", ifname="e"
            )

    async def test_no_scratch_tree_is_left_behind(
        self, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        scratch_parent = tmp_path / "tmp"
        scratch_parent.mkdir()
        monkeypatch.setenv("TMPDIR", str(scratch_parent))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)
        await NetplanNetworkdApplier(RecordingRunner(), root=root).apply(
            mac=MAC, path=root / "x", ifname="e"
        )
        assert list(scratch_parent.iterdir()) == []


class TestOneApplierAtATime:
    async def test_changes_queued_behind_a_running_apply_are_merged_into_one(
        self, root: Path
    ) -> None:
        third = "0a:1b:2c:3d:4e:61"
        for mac in (OTHER, third):
            write_ours(root, mac)
        runner = RecordingRunner()
        runner.hold = "networkctl reload"
        applier = NetplanNetworkdApplier(runner, root=root)
        first = asyncio.create_task(applier.apply(mac=MAC, path=root / "x", ifname="a"))
        await runner.held.wait()
        others = [
            asyncio.create_task(applier.apply(mac=m, path=root / "x", ifname="b"))
            for m in (OTHER, third)
        ]
        await asyncio.sleep(0)
        assert runner.commands() == [GENERATE, ("networkctl", "reload")]  # nothing concurrent
        runner.release.set()
        await asyncio.gather(first, *others)
        assert runner.commands() == [GENERATE, ("networkctl", "reload")] * 2
        assert len(networkd_files(root)) == 4

    async def test_a_stop_in_the_middle_fails_the_queued_nics_instead_of_losing_them(
        self, root: Path
    ) -> None:
        write_ours(root, OTHER)
        runner = RecordingRunner()
        runner.hold = "networkctl reload"
        applier = NetplanNetworkdApplier(runner, root=root)
        first = asyncio.create_task(applier.apply(mac=MAC, path=root / "x", ifname="a"))
        await runner.held.wait()
        second = asyncio.create_task(applier.apply(mac=OTHER, path=root / "x", ifname="b"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        runner.release.set()
        await second  # the next apply took it over once the lock was free
        assert runner.commands()[-1] == ("networkctl", "reload")


@pytest.fixture(autouse=True)
def short_autoconnect_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """NetworkManager is given AUTOCONNECT_WAIT to activate a new profile: short here."""
    monkeypatch.setattr(apply_nm, "AUTOCONNECT_WAIT", 0.1)


class TestNetworkManagerApplier:
    async def test_a_new_profile_that_networkmanager_activates_is_not_brought_up_again(
        self, keyfile: Path
    ) -> None:
        # Measured in the lab: `up` after the autoconnect replaced it, restarting DHCP.
        runner = RecordingRunner()
        runner.autoconnect = {UUID}
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert runner.calls == [("nmcli", "connection", "load", str(keyfile))]

    async def test_an_active_profile_is_reactivated_with_its_new_settings_at_once(
        self, keyfile: Path
    ) -> None:
        runner = RecordingRunner()
        runner.active = {UUID}
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert runner.calls[-1] == ("nmcli", "--wait", "0", "connection", "up", "uuid", UUID)
        assert runner.queries == 1  # no waiting for an autoconnect that cannot come

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

    async def test_one_load_for_a_burst_and_a_failing_up_is_only_that_nics(
        self, tmp_path: Path
    ) -> None:
        paths = {}
        for mac in (MAC, OTHER):
            paths[mac] = tmp_path / NetworkManagerRenderer().filename(mac)
            paths[mac].write_text("[connection]\n")
        runner = RecordingRunner(fail=f"nmcli --wait 0 connection up uuid {connection_uuid(OTHER)}")
        runner.hold = "nmcli connection load"
        applier = NetworkManagerApplier(runner)
        blocker = asyncio.create_task(applier.apply(mac=MAC, path=paths[MAC], ifname="a"))
        await runner.held.wait()
        a = asyncio.create_task(applier.apply(mac=MAC, path=paths[MAC], ifname="a"))
        b = asyncio.create_task(applier.apply(mac=OTHER, path=paths[OTHER], ifname="b"))
        await asyncio.sleep(0)
        runner.release.set()
        await blocker
        await a
        with pytest.raises(ApplyError, match="exited 1"):
            await b
        loads = [c for c in runner.calls if c[:3] == ("nmcli", "connection", "load")]
        assert loads[-1] == ("nmcli", "connection", "load", str(paths[MAC]), str(paths[OTHER]))

    async def test_a_missing_nmcli_is_an_apply_error(self, keyfile: Path) -> None:
        runner = RecordingRunner(fail="nmcli", returncode=127)
        with pytest.raises(ApplyError, match="exited 127"):
            await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")

    async def test_every_command_gets_the_apply_timeout(self, keyfile: Path) -> None:
        runner = RecordingRunner()
        await NetworkManagerApplier(runner).apply(mac=MAC, path=keyfile, ifname="ens6")
        assert set(runner.timeouts) == {TIMEOUT}


class TestNetplanNetworkManagerApplier:
    def test_the_profile_id_is_netplans_name_for_our_definition(self) -> None:
        assert netplan_nm_connection_id("0A-1B-2C-3D-4E-5F") == f"netplan-nicr-{KEY}"

    @pytest.fixture
    def nm_root(self, root: Path) -> Path:
        write_ours(root, MAC, backend="NetworkManager")
        live = root / "run/NetworkManager/system-connections"
        live.mkdir(parents=True)
        (live / "netplan-eth0.nmconnection").write_text("[connection]\n")
        return root

    async def test_it_generates_in_scratch_then_loads_only_our_keyfile_then_brings_it_up(
        self, nm_root: Path
    ) -> None:
        runner = RecordingRunner()
        await NetplanNetworkManagerApplier(runner, root=nm_root).apply(
            mac=MAC, path=nm_root / "x.yaml", ifname="ens6"
        )
        ours = nm_root / f"run/NetworkManager/system-connections/netplan-nicr-{KEY}.nmconnection"
        assert runner.commands() == [
            GENERATE,
            ("nmcli", "connection", "load", str(ours)),
            ("nmcli", "--wait", "0", "connection", "up", "id", f"netplan-nicr-{KEY}"),
        ]
        assert ours.stat().st_mode & 0o777 == 0o600
        assert "10.0.1.25/24" in ours.read_text()
        assert sorted(os.listdir(ours.parent)) == ["netplan-eth0.nmconnection", ours.name]

    async def test_without_the_nic_nothing_is_brought_up(self, nm_root: Path) -> None:
        runner = RecordingRunner()
        await NetplanNetworkManagerApplier(runner, root=nm_root).apply(
            mac=MAC, path=nm_root / "x.yaml", ifname=None
        )
        assert [c[:3] for c in runner.commands()] == [GENERATE[:3], ("nmcli", "connection", "load")]

    async def test_after_a_removal_the_deleted_keyfile_is_loaded_and_nothing_activated(
        self, nm_root: Path
    ) -> None:
        runner = RecordingRunner()
        applier = NetplanNetworkManagerApplier(runner, root=nm_root)
        await applier.apply(mac=MAC, path=nm_root / "x.yaml", ifname="ens6")
        (nm_root / "run/netplan" / f"90-nicreconciled-{KEY}.yaml").unlink()
        await applier.apply(mac=MAC, path=nm_root / "x.yaml", ifname="ens6")
        gone = nm_root / f"run/NetworkManager/system-connections/netplan-nicr-{KEY}.nmconnection"
        assert not gone.exists()
        assert runner.commands()[-2:] == [GENERATE, ("nmcli", "connection", "load", str(gone))]

    async def test_a_failing_load_raises_and_nothing_is_activated(self, nm_root: Path) -> None:
        runner = RecordingRunner(fail="nmcli connection load")
        applier = NetplanNetworkManagerApplier(runner, root=nm_root)
        with pytest.raises(ApplyError):
            await applier.apply(mac=MAC, path=nm_root / "x.yaml", ifname="ens6")
        assert [c[:2] for c in runner.calls] == [("netplan", "generate"), ("nmcli", "connection")]

    def test_the_default_root_is_the_hosts(self) -> None:
        assert NetplanNetworkManagerApplier(RecordingRunner()).root == Path("/")


def _dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_scratch_trees_of_dead_daemons_are_removed_and_nothing_else(tmp_path: Path) -> None:
    prefix = apply_netplan.SCRATCH_PREFIX
    stale = [f"{prefix}{_dead_pid()}.abc_12", f"{prefix}{os.getpid()}.x1", f"{prefix}old1"]
    kept = [f"{prefix}{os.getppid()}.live9", f"{prefix}new1", "nicreconciled-other.1.a"]
    for name in stale + kept:
        (tmp_path / name / "run").mkdir(parents=True)
    old = (tmp_path / f"{prefix}old1").stat().st_mtime - apply_netplan.UNTAGGED_STALE_AFTER - 1
    os.utime(tmp_path / f"{prefix}old1", (old, old))
    # Not a directory, or a link to one: never followed, never removed.
    (tmp_path / f"{prefix}{_dead_pid()}.file").write_text("")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"{prefix}{_dead_pid()}.link").symlink_to(tmp_path / "elsewhere")
    kept += [p.name for p in tmp_path.iterdir() if p.name.endswith((".file", ".link"))]

    removed = apply_netplan.remove_stale_scratch(tmp_path)

    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "elsewhere"])
    assert apply_netplan.remove_stale_scratch(tmp_path / "missing") == []


def test_a_scratch_tree_carries_the_daemons_pid() -> None:
    assert apply_netplan.scratch_prefix() == f"{apply_netplan.SCRATCH_PREFIX}{os.getpid()}."
