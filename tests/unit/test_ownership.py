"""NICs that are not ours: udev gives them to another manager, or the configuration excludes
them; and status files of NICs we no longer track. The daemon against fake /sys and /run
trees (no events are received: the test hands them to ``on_event``)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nicreconciled import config
from nicreconciled.daemon import Daemon
from nicreconciled.model import Observation
from nicreconciled.ownership import NOT_READY
from nicreconciled.reconciler import Context
from nicreconciled.render.netplan import NetplanRenderer
from nicreconciled.status import Managed, NicPhase, NicStatus, StatusStore
from nicreconciled.udev import Action, NicEvent, foreign_owner, to_event
from tests.unit.test_reconciler import FAST, state, until

NM = "org.freedesktop.NetworkManager"
NETWORKD = "io.systemd.Network"


class PerMac:
    """Every MAC is listed, with a state of its own; records which MACs were fetched."""

    name = "ec2"

    def __init__(self) -> None:
        self.fetched: list[str] = []

    async def detect(self) -> bool:
        return True

    async def fetch(self, mac: str) -> Observation:
        self.fetched.append(mac)
        return Observation(mac, state().model_copy(update={"mac": mac}))

    async def probe(self, keys: Sequence[str]) -> dict[str, str | None]:
        return {}

    async def close(self) -> None:
        return None


class Host:
    """/sys and /run trees: links plugged with an ifindex each, udev entries for them."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.run = root / "run"
        self.out = root / "out"
        self.state = root / "state"
        self.ifindex: dict[str, int] = {}
        (self.sys / "class" / "net").mkdir(parents=True)

    def plug(
        self, name: str, mac: str, udev: dict[str, str] | None = None, *, master: str = ""
    ) -> int:
        index = self.ifindex[name] = 10 + len(self.ifindex)
        dev = self.sys / "devices" / "pci0000:00" / f"0000:00:{index:02x}.0" / "net" / name
        dev.mkdir(parents=True)
        if master:
            (dev / "master").symlink_to(f"../../../{master}")
        (dev / "address").write_text(mac + "\n")
        (dev / "ifindex").write_text(f"{index}\n")
        (dev / "type").write_text("1\n")
        (self.sys / "class" / "net" / name).symlink_to(dev)
        if udev is not None:
            self.udev(name, udev)
        return index

    def unplug(self, name: str) -> None:
        (self.sys / "class" / "net" / name).unlink()

    def udev(self, name: str, properties: dict[str, str]) -> None:
        data = self.run / "udev" / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [f"E:{k}={v}" for k, v in properties.items()]
        (data / f"n{self.ifindex[name]}").write_text("I:1\n" + "".join(f"{x}\n" for x in lines))

    def udevd_runs(self) -> None:
        (self.run / "udev").mkdir(parents=True, exist_ok=True)
        (self.run / "udev" / "control").touch()

    def file_of(self, mac: str) -> Path:
        return self.out / NetplanRenderer().filename(mac)

    def status_of(self, mac: str) -> NicStatus | None:
        return StatusStore(self.state).load(mac)


MakeDaemon = Callable[..., Daemon]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
async def make_daemon(host: Host) -> AsyncIterator[MakeDaemon]:
    made: list[Daemon] = []

    def build(source: PerMac | None = None, **overrides: Any) -> Daemon:
        doc: dict[str, Any] = {
            "cloud": "ec2",
            "output_dir": str(host.out),
            "state_dir": str(host.state),
            "apply": False,
            "udev": {"source": "udev"},
        }
        doc.update(overrides)
        cfg = config.parse(doc)
        ctx = Context(
            boot_id="boot-1",
            source=source or PerMac(),
            renderer=NetplanRenderer(),
            applier=None,
            policy=FAST,
            output_dir=host.out,
            status=StatusStore(host.state),
            resync_interval=0.05,
            rng=random.Random(3),
        )
        daemon = Daemon(cfg, ctx, sys_root=host.sys, run_root=host.run)
        made.append(daemon)
        return daemon

    yield build
    for daemon in made:
        await daemon.shutdown()


def event(action: Action, name: str, host: Host, **properties: str) -> NicEvent:
    return NicEvent(action, name, host.ifindex.get(name), None, tuple(properties.items()))


class TestForeignOwner:
    @pytest.mark.parametrize(
        ("properties", "why"),
        [
            ({}, None),
            ({"ID_NET_MANAGED_BY": NETWORKD}, None),
            ({"ID_NET_MANAGED_BY": ""}, None),
            ({"ID_NET_MANAGED_BY": NM}, f"ID_NET_MANAGED_BY={NM}"),
            ({"ID_NET_MANAGED_BY": "unmanaged"}, "ID_NET_MANAGED_BY=unmanaged"),
            # netplan's own rules set it on every networkd definition, ours included.
            ({"NM_UNMANAGED": "1"}, None),
            ({"ID_NET_MANAGED_BY": NETWORKD, "NM_UNMANAGED": "1"}, None),
            ({"ID_NET_MANAGED_BY": "a\nb" + "c" * 100}, "ID_NET_MANAGED_BY=a?b" + "c" * 77 + "..."),
        ],
    )
    def test_a_nic_udev_gives_to_another_daemon_is_foreign(
        self, properties: dict[str, str], why: str | None
    ) -> None:
        assert foreign_owner(properties, {NETWORKD}) == why

    @pytest.mark.parametrize(
        ("properties", "why"),
        [
            ({"NM_UNMANAGED": "1"}, "NM_UNMANAGED=1"),
            ({"NM_UNMANAGED": "TRUE"}, "NM_UNMANAGED=TRUE"),
            ({"NM_UNMANAGED": "0"}, None),
            ({"ID_NET_MANAGED_BY": NM, "NM_UNMANAGED": "1"}, "NM_UNMANAGED=1"),
            ({"ID_NET_MANAGED_BY": NETWORKD}, f"ID_NET_MANAGED_BY={NETWORKD}"),
        ],
    )
    def test_nm_unmanaged_gives_a_nic_away_only_from_networkmanager(
        self, properties: dict[str, str], why: str | None
    ) -> None:
        assert foreign_owner(properties, {NM}) == why

    def test_a_udev_event_carries_the_ownership_properties(self) -> None:
        class Device:
            action = "add"
            sys_name = "eth1"

            def __init__(self) -> None:
                self.props = {"INTERFACE": "eth1", "IFINDEX": "4", "NM_UNMANAGED": "1", "X": "x"}

            def get(self, key: str, default: Any = None) -> Any:
                return self.props.get(key, default)

        got = to_event(Device())
        assert got == NicEvent("add", "eth1", 4, None, (("NM_UNMANAGED", "1"),))


class TestUdevOwnership:
    async def test_nics_given_to_other_managers_are_never_polled_and_say_why(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", "0a:00:00:00:00:01", {"ID_NET_MANAGED_BY": NM})
        host.plug("eth2", "0a:00:00:00:00:02", {"ID_NET_MANAGED_BY": "unmanaged"})
        host.plug("eth3", "0a:00:00:00:00:03", {"ID_NET_MANAGED_BY": NETWORKD})
        # What netplan's 90-netplan.rules gives every NIC it renders for networkd.
        host.plug("eth4", "0a:00:00:00:00:04", {"NM_UNMANAGED": "1"})
        source = PerMac()
        daemon = make_daemon(source)
        daemon.scan()
        assert sorted(daemon.reconcilers) == ["0a:00:00:00:00:03", "0a:00:00:00:00:04"]
        assert {m: s.managed_text for m, s in daemon.ignored.items()} == {
            "0a:00:00:00:00:01": f"foreign: ID_NET_MANAGED_BY={NM}",
            "0a:00:00:00:00:02": "foreign: ID_NET_MANAGED_BY=unmanaged",
        }
        # Counted like a NIC the metadata does not list: there, settled, not managed.
        assert daemon._status_line() == "4 NICs (0 managed): 2 converged, 2 waiting, 0 failing"
        await until(lambda: host.file_of("0a:00:00:00:00:04").exists())
        await until(lambda: daemon._status_line().endswith("4 converged, 0 waiting, 0 failing"))
        assert set(source.fetched) == {"0a:00:00:00:00:03", "0a:00:00:00:00:04"}
        assert not host.file_of("0a:00:00:00:00:01").exists()
        saved = host.status_of("0a:00:00:00:00:01")
        assert saved is not None
        assert (saved.phase, saved.managed, saved.ifname) == (
            NicPhase.CONVERGED,
            Managed.FOREIGN,
            "eth1",
        )

    @pytest.mark.parametrize(
        ("overrides", "foreign"),
        [
            ({}, NM),
            ({"netplan": {"backend": "NetworkManager"}}, NETWORKD),
            ({"renderer": "networkmanager"}, NETWORKD),
        ],
    )
    async def test_ours_is_the_daemon_our_files_are_loaded_by(
        self, host: Host, make_daemon: MakeDaemon, overrides: dict[str, Any], foreign: str
    ) -> None:
        host.plug("eth1", "0a:00:00:00:00:01", {"ID_NET_MANAGED_BY": NM})
        host.plug("eth2", "0a:00:00:00:00:02", {"ID_NET_MANAGED_BY": NETWORKD})
        daemon = make_daemon(**overrides)
        links = {link.name: link for link in daemon_links(daemon)}
        verdicts = {name: daemon.not_ours(link) for name, link in links.items()}
        assert [v for v in verdicts.values() if v is not None] == [
            (Managed.FOREIGN, f"ID_NET_MANAGED_BY={foreign}")
        ]

    @pytest.mark.parametrize(
        ("overrides", "foreign"),
        [
            ({}, False),
            ({"netplan": {"backend": "NetworkManager"}}, True),
            ({"renderer": "networkmanager"}, True),
        ],
    )
    async def test_nm_unmanaged_counts_only_where_networkmanager_loads_our_files(
        self, host: Host, make_daemon: MakeDaemon, overrides: dict[str, Any], foreign: bool
    ) -> None:
        """netplan's own rules mark every NIC it renders for networkd NM_UNMANAGED (ours
        too, after any live ``netplan generate`` and a udev event): on networkd that is not
        a reason to give the NIC up; where our files are NetworkManager's, it is."""
        host.plug("eth1", "0a:00:00:00:00:01", {"NM_UNMANAGED": "1"})
        daemon = make_daemon(**overrides)
        (link,) = daemon_links(daemon)
        verdict = daemon.not_ours(link)
        assert verdict == ((Managed.FOREIGN, "NM_UNMANAGED=1") if foreign else None)

    async def test_with_kernel_events_udev_is_not_consulted(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.udevd_runs()
        host.plug("eth1", "0a:00:00:00:00:01", {"NM_UNMANAGED": "1"})
        host.plug("eth2", "0a:00:00:00:00:02")  # no entry either
        daemon = make_daemon(udev={"source": "kernel"})
        daemon.scan()
        daemon.on_event(event("change", "eth1", host, NM_UNMANAGED="1"))
        assert sorted(daemon.reconcilers) == ["0a:00:00:00:00:01", "0a:00:00:00:00:02"]
        assert daemon.ignored == {}

    async def test_a_nic_udev_has_not_processed_waits_for_its_event(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.udevd_runs()
        host.plug("eth1", "0a:00:00:00:00:01")
        host.plug("eth2", "0a:00:00:00:00:02")
        host.out.mkdir()
        host.file_of("0a:00:00:00:00:01").write_text("# from before a restart\n")
        daemon = make_daemon()
        assert daemon.not_ours(daemon_links(daemon)[0]) == NOT_READY
        daemon.scan()
        daemon.adopt_orphans()  # attached: not an orphan, though its file is there
        assert daemon.reconcilers == {}
        assert daemon.ignored == {}
        assert daemon._status_line().startswith("0 NICs")
        daemon.on_event(event("add", "eth1", host))
        daemon.on_event(event("add", "eth2", host, ID_NET_MANAGED_BY="unmanaged"))
        assert list(daemon.reconcilers) == ["0a:00:00:00:00:01"]
        assert list(daemon.ignored) == ["0a:00:00:00:00:02"]
        daemon.scan()  # the entries are still missing: what the events said stands
        assert list(daemon.reconcilers) == ["0a:00:00:00:00:01"]
        assert list(daemon.ignored) == ["0a:00:00:00:00:02"]

    async def test_a_change_event_hands_a_nic_over_and_back(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        mac = "0a:00:00:00:00:01"
        host.plug("eth1", mac, {})
        daemon = make_daemon()
        daemon.scan()
        await until(lambda: host.file_of(mac).exists())
        task = daemon.tasks[mac]
        with capture_logs() as logs:
            daemon.on_event(event("change", "eth1", host, ID_NET_MANAGED_BY="unmanaged"))
        assert mac not in daemon.reconcilers
        assert mac not in daemon.tasks
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        (note,) = [e for e in logs if e["event"] == "nic_not_ours"]
        assert note["log_level"] == "warning"
        assert note["file_kept"] == str(host.file_of(mac))  # ours, but no longer ours to load
        assert host.file_of(mac).exists()
        saved = host.status_of(mac)
        assert saved is not None
        assert saved.managed_text == "foreign: ID_NET_MANAGED_BY=unmanaged"
        with capture_logs() as logs:
            daemon.on_event(event("change", "eth1", host, ID_NET_MANAGED_BY="unmanaged"))
        assert [e["event"] for e in logs] == ["udev_event"]  # said once
        daemon.on_event(event("change", "eth1", host))
        assert mac in daemon.reconcilers
        assert daemon.ignored == {}
        await until(lambda: (s := host.status_of(mac)) is not None and s.managed is Managed.MANAGED)

    async def test_a_foreign_nic_that_goes_away_takes_its_status_with_it(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", "0a:00:00:00:00:01", {"ID_NET_MANAGED_BY": "unmanaged"})
        host.plug("eth2", "0a:00:00:00:00:02", {"ID_NET_MANAGED_BY": "unmanaged"})
        daemon = make_daemon()
        daemon.scan()
        assert host.status_of("0a:00:00:00:00:01") is not None
        host.unplug("eth1")
        daemon.on_event(NicEvent("remove", "eth1", None))
        assert host.status_of("0a:00:00:00:00:01") is None
        host.unplug("eth2")
        daemon.scan()  # a missed remove event
        assert host.status_of("0a:00:00:00:00:02") is None
        assert daemon.ignored == {}


def daemon_links(daemon: Daemon) -> list[Any]:
    from nicreconciled.system import sysfs

    return sysfs.list_links(daemon.sys_root)


class TestExcludedMacs:
    async def test_an_excluded_mac_is_never_polled_nor_adopted(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        excluded = "0a:00:00:00:00:01"
        host.plug("eth1", excluded)
        host.plug("eth2", "0a:00:00:00:00:02")
        host.out.mkdir()
        host.file_of(excluded).write_text("# written before the exclusion\n")
        source = PerMac()
        daemon = make_daemon(
            source, udev={"source": "kernel"}, interfaces={"exclude_macs": ["0A:00:00:00:00:01"]}
        )
        daemon.scan()
        daemon.adopt_orphans()
        await until(lambda: host.file_of("0a:00:00:00:00:02").exists())
        assert list(daemon.reconcilers) == ["0a:00:00:00:00:02"]
        assert excluded not in source.fetched
        saved = host.status_of(excluded)
        assert saved is not None
        assert saved.managed_text == "excluded: exclude_macs"
        assert host.file_of(excluded).read_text() == "# written before the exclusion\n"

    async def test_device_numbers_reach_the_reconcilers(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", "0a:00:00:00:00:01")
        daemon = make_daemon(interfaces={"exclude_device_numbers": ["1-2"]})
        daemon.scan()
        mac = "0a:00:00:00:00:01"
        await until(
            lambda: (s := host.status_of(mac)) is not None and s.managed is not Managed.PENDING
        )
        saved = host.status_of(mac)
        assert saved is not None
        assert saved.managed_text == "excluded: exclude_device_numbers 1-2"
        assert not host.file_of(mac).exists()


class TestPruning:
    async def test_status_files_of_nics_we_do_not_track_are_pruned_or_looked_at(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        store = StatusStore(host.state)
        attached, ignored_now, old, young, orphan = (f"0a:00:00:00:00:0{i}" for i in range(1, 6))
        host.plug("eth1", attached)
        host.plug("docker0", ignored_now)
        for mac in (attached, ignored_now, old, young, orphan):
            store.save(NicStatus(mac=mac, phase=NicPhase.CONVERGED, managed=Managed.MANAGED))
        two_days_ago = time.time() - 2 * 86400
        for mac in (attached, ignored_now, old, orphan):
            path = store.directory / f"{mac.replace(':', '')}.json"
            os.utime(path, (two_days_ago, two_days_ago))
        host.out.mkdir()
        host.file_of(orphan).write_text("# ours\n")
        daemon = make_daemon(udev={"source": "kernel"}, interfaces={"ignore": ["docker*"]})
        with capture_logs() as logs:
            daemon.scan()
            daemon.adopt_orphans()
        pruned = {e["mac"]: e["reason"] for e in logs if e["event"] == "status_pruned"}
        assert pruned == {ignored_now: "not eligible", old: "gone"}
        assert sorted(daemon.reconcilers) == [attached, young, orphan]
        assert daemon.reconcilers[young].ifname is None  # looked at once more: gone or not
        assert {s.mac for s in store.load_all()} == {attached, young, orphan}


class TestRender:
    async def test_render_says_why_it_prints_nothing_for_an_excluded_nic(
        self, host: Host, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from nicreconciled import cli

        cfg = config.parse(
            {
                "cloud": "ec2",
                "interfaces": {
                    "exclude_macs": ["0a:00:00:00:00:09"],
                    "exclude_device_numbers": [1],
                },
            }
        )
        ctx = Context(
            source=PerMac(),
            renderer=NetplanRenderer(),
            applier=None,
            policy=FAST,
            output_dir=host.out,
            status=StatusStore(host.state),
        )
        assert await cli._render(cfg, ctx, "0a:00:00:00:00:02") == 0
        assert await cli._render(cfg, ctx, "0a:00:00:00:00:09") == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert err.splitlines() == [
            "# 0a:00:00:00:00:02: not managed (excluded: exclude_device_numbers 1)",
            "# 0a:00:00:00:00:09: not managed (excluded: exclude_macs)",
        ]
        assert ctx.source.fetched == ["0a:00:00:00:00:02"]  # type: ignore[attr-defined]


class TestOneLinkPerMac:
    """Azure accelerated networking: a VF with its synthetic NIC's MAC hot-plugs, and the
    synthetic NIC enslaves it. The NIC stays on its own link throughout."""

    MAC = "0a:00:00:00:00:01"

    async def test_an_enslaved_port_is_never_the_nic(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", self.MAC, {})
        host.plug("vf0", self.MAC, {"ID_NET_MANAGED_BY": "unmanaged"}, master="eth1")
        daemon = make_daemon()
        daemon.scan()
        assert daemon.reconcilers[self.MAC].ifindex == host.ifindex["eth1"]
        assert daemon.ignored == {}
        daemon.on_event(event("add", "vf0", host, ID_NET_MANAGED_BY="unmanaged"))
        assert daemon.reconcilers[self.MAC].ifname == "eth1"

    async def test_a_vf_not_yet_enslaved_neither_takes_the_nic_nor_gives_it_away(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", self.MAC, {})
        daemon = make_daemon()
        daemon.scan()
        await until(lambda: host.file_of(self.MAC).exists())
        task = daemon.tasks[self.MAC]
        host.plug("vf0", self.MAC, {"ID_NET_MANAGED_BY": "unmanaged"})
        with capture_logs() as logs:
            daemon.on_event(event("add", "vf0", host, ID_NET_MANAGED_BY="unmanaged"))
        assert [e["event"] for e in logs][-1] == "nic_duplicate_mac"
        rec = daemon.reconcilers[self.MAC]
        assert (rec.ifname, rec.ifindex) == ("eth1", host.ifindex["eth1"])
        assert daemon.ignored == {}
        assert not task.done()
        # The scan keeps the NIC on the link its reconciler follows (vf0 sorts after eth1:
        # the last name used to win).
        daemon.scan()
        assert daemon.reconcilers[self.MAC].ifname == "eth1"
        # The VF goes: the NIC is not detached.
        host.unplug("vf0")
        daemon.on_event(NicEvent("remove", "vf0", None))
        assert daemon.reconcilers[self.MAC].present
        assert daemon.reconcilers[self.MAC].ifname == "eth1"

    async def test_at_start_the_older_link_stands_for_the_nic(
        self, host: Host, make_daemon: MakeDaemon
    ) -> None:
        host.plug("eth1", self.MAC, {})
        host.plug("eth9", self.MAC, {})  # same MAC, a later ifindex, a name sorting last
        daemon = make_daemon()
        daemon.scan()
        assert daemon.reconcilers[self.MAC].ifindex == host.ifindex["eth1"]
