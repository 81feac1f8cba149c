"""The TOML configuration: defaults, strictness, one-line errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nicreconciled import config
from nicreconciled.errors import ConfigError
from nicreconciled.sources.cloudstack import CloudStackConfig
from nicreconciled.sources.ec2 import Ec2Config


class TestDefaults:
    def test_an_empty_document_gives_the_documented_defaults(self) -> None:
        c = config.parse({})
        assert c.cloud == "auto"
        assert c.renderer == "auto"
        assert c.effective_output_dir == Path("/run/netplan")
        assert c.state_dir == Path("/var/lib/nicreconciled")
        assert c.apply is True
        assert c.manage_primary is False
        assert c.resync_interval == 60.0
        assert c.interfaces.ignore == ()
        assert c.interfaces.virtual is False
        assert c.interfaces.exclude_macs == ()
        assert c.interfaces.exclude_device_numbers == ()
        assert c.udev.source == "udev"
        assert c.section(Ec2Config).endpoint == "http://169.254.169.254"
        assert c.section(CloudStackConfig).endpoint == ""

    def test_networkmanager_gets_its_own_default_output_dir(self) -> None:
        c = config.parse({"renderer": "networkmanager"})
        assert c.effective_output_dir == Path("/run/NetworkManager/system-connections")

    def test_networkd_gets_its_own_default_output_dir(self) -> None:
        c = config.parse({"renderer": "networkd"})
        assert c.effective_output_dir == Path("/run/systemd/network")

    def test_a_missing_default_file_means_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(config, "DEFAULT_PATH", Path("/nonexistent/nicreconciled.toml"))
        assert config.load(None) == config.Config()

    def test_a_missing_explicit_file_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="no such file"):
            config.load(tmp_path / "absent.toml")

    def test_whole_seconds_may_be_written_as_integers(self) -> None:
        c = config.parse({"resync_interval": 5, "polling": {"deadline": 30}})
        assert c.resync_interval == 5.0
        assert c.polling.deadline == 30.0


class TestExclusions:
    def test_excluded_macs_are_normalized_and_matched_in_any_case(self) -> None:
        c = config.parse(
            {"interfaces": {"exclude_macs": ["0A:1B:2C:3D:4E:5F", "0a-00-00-00-00-09"]}}
        )
        assert c.interfaces.exclude_macs == ("0a:1b:2c:3d:4e:5f", "0a:00:00:00:00:09")
        assert c.interfaces.excludes_mac("0a:1b:2c:3d:4e:5f")
        assert c.interfaces.excludes_mac("0a:00:00:00:00:09")
        assert not c.interfaces.excludes_mac("0a:1b:2c:3d:4e:50")

    def test_device_numbers_are_numbers_or_inclusive_ranges(self) -> None:
        c = config.parse({"interfaces": {"exclude_device_numbers": [3, "5", "8-11", "0-0"]}})
        ranges = c.interfaces.exclude_device_numbers
        assert ranges == ((3, 3), (5, 5), (8, 11), (0, 0))
        found = {n: config.excluded_device_number(ranges, n) for n in range(13)}
        assert found == {
            0: "0", 1: None, 2: None, 3: "3", 4: None, 5: "5", 6: None, 7: None,
            8: "8-11", 9: "8-11", 10: "8-11", 11: "8-11", 12: None,
        }  # fmt: skip

    def test_a_bad_entry_is_named_in_the_one_line_error(self) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse({"interfaces": {"exclude_device_numbers": [2, "9-4"]}})
        assert str(caught.value) == (
            "interfaces.exclude_device_numbers: Value error, '9-4': the range is reversed"
        )
        with pytest.raises(ConfigError) as caught:
            config.parse({"interfaces": {"exclude_macs": ["0a:00:00:00:00:01", "eth1"]}})
        assert str(caught.value).startswith("interfaces.exclude_macs.1: ")
        assert "'eth1'" in str(caught.value)


class TestErrors:
    @pytest.mark.parametrize(
        ("doc", "key", "why"),
        [
            ({"colud": "ec2"}, "colud", "unknown key"),
            ({"interfaces": {"virtaul": True}}, "interfaces.virtaul", "unknown key"),
            ({"cloud": "nimbus"}, "cloud", "must be one of ec2, cloudstack"),
            ({"renderer": "ifupdown"}, "renderer", "'networkd' or 'auto'"),
            ({"apply": "yes"}, "apply", "valid boolean"),
            ({"resync_interval": 0}, "resync_interval", "greater than or equal to 1"),
            ({"resync_interval": "60"}, "resync_interval", "valid number"),
            ({"output_dir": "run/netplan"}, "output_dir", "absolute path"),
            ({"interfaces": {"ignore": "docker*"}}, "interfaces.ignore", "tuple"),
            ({"udev": {"source": "both"}}, "udev.source", "'udev' or 'kernel'"),
            ({"ec2": {"endpoint": "169.254.169.254"}}, "ec2.endpoint", "http://"),
            ({"polling": {"initial_interval": 9, "max_interval": 1}}, "polling", "exceed"),
        ],
    )
    def test_a_bad_value_names_the_key_and_the_reason_on_one_line(
        self, doc: dict[str, object], key: str, why: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse(doc)
        message = str(caught.value)
        assert message.startswith(f"{key}")
        assert why in message
        assert "\n" not in message

    def test_invalid_toml_is_reported_with_the_path(self, tmp_path: Path) -> None:
        bad = tmp_path / "c.toml"
        bad.write_text("cloud = \n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            config.load(bad)


#: Run in a fresh interpreter: config alone, then the registry handing it the sources' tables.
ALONE = """
import sys
from nicreconciled import config
assert "nicreconciled.sources" not in sys.modules, "config imported the source registry"
assert config.parse({"renderer": "networkd", "polling": {"deadline": 30}}) != config.Config()
try:
    config.parse({"cloud": "ec2"})
except RuntimeError as exc:
    assert "nicreconciled.sources" in str(exc), exc
else:
    raise AssertionError("a cloud was accepted with no registry to check it against")
import nicreconciled.sources
assert config.parse({"cloud": "ec2", "ec2": {"token_ttl": 60}}).cloud == "ec2"
"""


class TestNoImportCycle:
    """The registry hands config the sources' tables; config never imports a source."""

    def test_config_names_no_source_module_anywhere(self) -> None:
        tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert imported  # the walk sees imports, including those inside functions
        assert not [m for m in imported if m and m.startswith("nicreconciled.sources")]

    def test_config_works_alone_and_takes_the_tables_from_the_registry(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", ALONE], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
