"""A real systemd-udevd in the lab's instance (opt-in: ``Lab(..., udev_rules={...})``), for
what udev rules decide about a NIC (``ID_NET_MANAGED_BY``, ``NM_UNMANAGED``).

How such an instance differs from the usual one, and why:

* ``/sys`` stays writable. systemd (networkd, and udev's clients) asks udev about a link only
  when ``/sys`` is writable ("udev is available"); with udevd running they get the answer
  instead of waiting forever, as on a real host.
* udevd reads the test's rules only: tmpfs over ``/etc/udev/rules.d`` and
  ``/usr/lib/udev/rules.d`` (``/lib/udev/rules.d`` on merged-/usr Debian), the rules
  written before udevd starts. The distribution's rules would mark veths not named ``eth*``
  ``NM_UNMANAGED`` (NetworkManager's 85-nm-unmanaged.rules), apply sysctl.d to every new NIC
  (99-systemd.rules: rp_filter among others) and run ``net_setup_link`` (.link files).
* A private ``/dev`` (a tmpfs with the few character devices the lab's processes use). The
  kernel sends the uevents of every device without a network namespace (disks, USB, ...) to
  every network namespace of the initial user namespace: udevd in the instance would set
  those nodes' modes and owners and make ``/dev/block`` and ``/dev/char`` links in the
  host's ``/dev``. Here it finds no node, and its links land in the tmpfs.
* The links present before udevd started (``lo``) get a synthetic "add" (``udevadm trigger``
  writes the instance's own ``/sys/class/net/*/uevent``), so udev has processed them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from nicreconciled.lab.procs import Proc, wait_until

if TYPE_CHECKING:
    from nicreconciled.lab.base import LabBase

UDEVD = "/lib/systemd/systemd-udevd"
TOOLS = ("udevadm", "mknod", UDEVD)
RULES_DIR = "/etc/udev/rules.d"
#: Private tmpfs in such an instance, with their modes (besides base.PRIVATE_DIRS).
PRIVATE_DIRS = {RULES_DIR: "0755", "/usr/lib/udev/rules.d": "0755"}
#: /dev of such an instance: name -> (major, minor) of the character device.
DEV_NODES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
#: udevd's control socket: there once it listens (how libudev itself tells it runs).
CONTROL = "/run/udev/control"


def holder_steps() -> list[list[str]]:
    """Commands run in the instance's new mount namespace before anything starts there."""
    steps = [["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid", "nrl-dev", "/dev"]]
    for name, (major, minor) in DEV_NODES.items():
        steps.append(["mknod", "-m", "0666", f"/dev/{name}", "c", str(major), str(minor)])
    steps.append(["ln", "-s", "/proc/self/fd", "/dev/fd"])
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        steps.append(["ln", "-s", f"/proc/self/fd/{n}", f"/dev/{name}"])
    steps.append(["mkdir", "-m", "1777", "/dev/shm"])
    for target, mode in PRIVATE_DIRS.items():
        steps.append(["mount", "-t", "tmpfs", "-o", f"mode={mode}", "nrl", target])
    return steps


def check_rules(rules: Mapping[str, str]) -> None:
    for name in rules:
        if "/" in name or not name.endswith(".rules"):
            raise ValueError(f"a udev rules file name ends in .rules, no directory: {name!r}")


def argv() -> list[str]:
    """systemd-udevd in the foreground, debug log on stderr."""
    return [UDEVD, "--debug"]


def trigger_argv() -> list[str]:
    """A synthetic "add" for every link of the instance (its /sys shows only its own)."""
    return ["udevadm", "trigger", "--action=add", "--subsystem-match=net"]


def start(lab: LabBase, rules: Mapping[str, str]) -> Proc:
    """Write RULES, start udevd in LAB's instance, wait until it listens and has processed
    every link there; its Proc (stopped with the lab's other processes)."""
    from nicreconciled.lab.base import LabError, check_binary

    for name, text in rules.items():
        lab.write(f"{RULES_DIR}/{name}", text, 0o644)
    proc = lab.procs.spawn(
        "systemd-udevd", [*lab.enter_instance(), *argv()], log=lab.workdir / "udevd.log"
    )
    control = lab.path(CONTROL)

    def listening() -> bool:
        if not proc.alive():
            raise LabError(f"systemd-udevd exited:\n{proc.tail()}")
        return control.is_socket()

    if not wait_until(listening, 20):
        raise LabError(f"systemd-udevd not listening after 20 s:\n{proc.tail()}")
    check_binary(proc, UDEVD)
    lab.run(trigger_argv())
    links = [link["ifindex"] for link in lab.ip_json("link", "show")]
    entries = [lab.path(f"/run/udev/data/n{index}") for index in links]
    if not wait_until(lambda: all(p.exists() for p in entries), 20):
        raise LabError(f"udev did not process the links {links}:\n{proc.tail()}")
    return proc
