"""What networkd's configuration files say about foreign rules and routes (coexist.py)."""

from __future__ import annotations

from pathlib import Path

from nicreconciled import coexist
from nicreconciled.system.rtnl import KRule

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class TestNetworkdPolicy:
    def test_without_files_networkd_removes_foreign_rules_and_routes(self, tmp_path: Path) -> None:
        policy = coexist.networkd_policy(tmp_path)
        assert policy.rules
        assert policy.routes

    def test_the_shipped_drop_in_turns_both_off(self, tmp_path: Path) -> None:
        shipped = (REPO / "contrib/networkd/60-nicreconciled.conf").read_text()
        write(tmp_path, coexist.DROP_IN, shipped)
        policy = coexist.networkd_policy(tmp_path)
        assert not policy.rules
        assert not policy.routes
        # The lab installs the same thing.
        write(tmp_path / "lab", coexist.DROP_IN, coexist.DROP_IN_TEXT)
        assert coexist.networkd_policy(tmp_path / "lab") == coexist.ForeignPolicy(
            False, False, (str(tmp_path / "lab" / coexist.DROP_IN),)
        )

    def test_a_later_drop_in_and_an_etc_mask_win(self, tmp_path: Path) -> None:
        write(tmp_path, coexist.DROP_IN, coexist.DROP_IN_TEXT)
        write(
            tmp_path,
            "etc/systemd/networkd.conf.d/90-cni.conf",
            "[Network]\nManageForeignRoutingPolicyRules=yes\n",
        )
        policy = coexist.networkd_policy(tmp_path)
        assert policy.rules
        assert not policy.routes
        write(tmp_path, "etc/systemd/networkd.conf.d/90-cni.conf", "")
        write(tmp_path, "etc/systemd/networkd.conf.d/60-nicreconciled.conf", "")  # masked
        assert coexist.networkd_policy(tmp_path).rules

    def test_the_main_file_counts_and_drop_ins_override_it(self, tmp_path: Path) -> None:
        write(tmp_path, "etc/systemd/networkd.conf", "[Network]\nManageForeignRoutes=no\n")
        assert not coexist.networkd_policy(tmp_path).routes
        write(tmp_path, "run/systemd/networkd.conf.d/x.conf", "[Network]\nManageForeignRoutes=\n")
        assert coexist.networkd_policy(tmp_path).routes

    def test_garbage_is_skipped(self, tmp_path: Path) -> None:
        write(tmp_path, "etc/systemd/networkd.conf", "\x00[[[not ini")
        assert coexist.networkd_policy(tmp_path).rules


def rule(priority: int, table: int, family: int = 2, **kw: object) -> KRule:
    fields: dict[str, object] = {
        "family": family,
        "priority": priority,
        "table": table,
        "action": 1,
        "src": None,
        "src_len": 0,
        "dst": None,
        "dst_len": 0,
        "fwmark": None,
        "iifname": None,
        "oifname": None,
        "tos": 0,
        "raw": b"",
    }
    fields.update(kw)
    return KRule(**fields)  # type: ignore[arg-type]


class TestAtRisk:
    def test_the_kernels_own_rules_are_never_at_risk(self) -> None:
        rules = [rule(0, 255), rule(32766, 254), rule(32767, 253), rule(0, 255, 10)]
        rules += [rule(32766, 254, 10)]
        assert coexist.at_risk(rules) == []

    def test_anything_else_is_named(self) -> None:
        found = coexist.at_risk([rule(0, 255), rule(100, 200, fwmark=0x80)])
        assert len(found) == 1
        assert "fwmark 0x80" in found[0]
        assert "lookup 200" in found[0]
