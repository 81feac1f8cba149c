"""Bad configuration: every key, with a wrong type and with a wrong value, is refused with one
line naming the key, exit status 2 and nothing written.

``config.parse`` is checked for every key the model has (the tables below must cover every
key: a new key without cases fails here); the command line for a representative set, as a
subprocess: ``python -m nicreconciled --config FILE once``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from nicreconciled import config
from nicreconciled.errors import ConfigError
from nicreconciled.sources import SOURCES, source_class

#: key -> values of the wrong TOML type (a table where a scalar goes counts too).
WRONG_TYPE: dict[str, list[Any]] = {
    "cloud": [5, ["ec2"]],
    "renderer": [True],
    "output_dir": [5, ["/run/netplan"]],
    "state_dir": [False, {"path": "/var/lib/x"}],
    "apply": ["yes", 1],
    "manage_primary": [1, "false"],
    "resync_interval": ["60", True, [60]],
    "interfaces": ["docker*", [1]],
    "interfaces.ignore": ["docker*", [1], ["ok", 2]],
    "interfaces.virtual": ["no", 0],
    "interfaces.exclude_macs": ["0a:00:00:00:00:01", [1], [["0a:00:00:00:00:01"]]],
    "interfaces.exclude_device_numbers": ["2-7", 3, [1.5], [True], [[2, 7]]],
    "udev": ["kernel"],
    "udev.source": [1],
    "ec2": ["http://169.254.169.254"],
    "ec2.endpoint": [1, ["http://169.254.169.254"]],
    "ec2.fallback_endpoint": [False],
    "ec2.token_ttl": ["21600", 3600.0, True],
    "cloudstack": [1],
    "cloudstack.endpoint": [1],
    "netplan": ["networkd"],
    "netplan.backend": [1],
    "netplan.generator": [1, ["/usr/libexec/netplan/generate"]],
    "polling": [5],
    "polling.initial_interval": ["0.25", False],
    "polling.max_interval": [[5]],
    "polling.probe_interval": [True],
    "polling.stable_polls": [2.0, "2"],
    "polling.ipv6_grace": ["10"],
    "polling.unlisted_grace": ["5"],
    "polling.deadline": [{"s": 1}],
    "polling.request_rate": ["100"],
    "polling.request_timeout": ["2"],
    "kernel": [True],
    "kernel.heal": ["yes", 1],
    "kernel.heal_limit": [5.0, "5", True],
    "metrics": ["/var/lib/prometheus/node-exporter/nicreconciled.prom"],
    "metrics.textfile": [1, True, ["/x.prom"]],
}

#: key -> values of the right type but out of range or malformed.
WRONG_VALUE: dict[str, list[Any]] = {
    "cloud": ["nimbus", "EC2", ""],
    "renderer": ["ifupdown", "NetworkManager"],
    "output_dir": ["run/netplan", ""],
    "state_dir": ["var/lib/nicreconciled", ""],
    "resync_interval": [0, 0.5, 86401, -1, math.nan, math.inf],
    "udev.source": ["both", ""],
    "interfaces.exclude_macs": [
        ["0a:00:00:00:00"],
        ["0a:00:00:00:00:01:02"],
        ["zz:00:00:00:00:01"],
        [""],
        ["0a:00:00:00:00:01", "nope"],
    ],
    "interfaces.exclude_device_numbers": [
        ["7-2"],
        [100],
        ["0-100"],
        [-1],
        ["x"],
        ["2-"],
        ["-2"],
        ["1-2-3"],
        [" 3"],
        ["0x3"],
    ],
    "ec2.endpoint": ["169.254.169.254", "ftp://169.254.169.254", "HTTP//x"],
    "ec2.fallback_endpoint": ["fd00:ec2::254", "[fd00:ec2::254]"],
    "ec2.token_ttl": [59, 21601, 0, -1],
    "cloudstack.endpoint": ["10.1.1.1", "file:///etc/passwd"],
    "netplan.backend": ["networkmanager", "ifupdown"],
    "netplan.generator": ["generate", "usr/libexec/netplan/generate"],
    "polling.initial_interval": [0, -0.25, 61, math.nan],
    "polling.max_interval": [0, 601],
    "polling.probe_interval": [0, 61],
    "polling.stable_polls": [0, 21, -2],
    "polling.ipv6_grace": [-1, 3601, math.nan],
    "polling.unlisted_grace": [-1, 3601, math.nan],
    "polling.deadline": [0, 86401, math.inf],
    "polling.request_rate": [0, 1001],
    "polling.request_timeout": [0, 61, -2],
    "kernel.heal_limit": [-1, 1001],
    "metrics.textfile": ["nicreconciled.prom", "/var/lib/x.txt", "/var/lib/.prom", "x/y.prom"],
}

#: Keys whose type admits no wrong value: a boolean is either; any glob list is a list of
#: patterns (a pattern that matches nothing is not an error).
NO_WRONG_VALUE = {
    "apply",
    "manage_primary",
    "interfaces.virtual",
    "interfaces.ignore",
    "kernel.heal",
}


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, bool]]:
    """(dotted key, is a table) for every key of MODEL, tables included."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield key, True
            yield from model_keys(sub, f"{key}.")
        else:
            yield key, False


def all_keys() -> dict[str, bool]:
    """The core keys and every registered source's table."""
    keys = dict(model_keys(config.Config))
    for name in SOURCES:
        keys[name] = True
        keys.update(model_keys(source_class(name).Settings, f"{name}."))
    return keys


ALL_KEYS = all_keys()
#: The sources whose keys the tables above cover; every other source's own tests cover its
#: keys' values (a new cloud edits no file but its own), and the generic tests below its
#: unknown keys and wrong types.
COVERED_HERE = ("ec2", "cloudstack")
CORE_KEYS = {
    k: t
    for k, t in ALL_KEYS.items()
    if k.partition(".")[0] not in SOURCES or k.partition(".")[0] in COVERED_HERE
}


def nested(key: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def cases(table: Mapping[str, list[Any]]) -> list[Any]:
    return [
        pytest.param(key, value, id=f"{key}={value!r}")
        for key, values in table.items()
        for value in values
    ]


def assert_names_the_key(message: str, key: str) -> None:
    assert "\n" not in message, message
    # The key itself, or an entry of it ("interfaces.ignore.1: ...").
    assert message.startswith((f"{key}:", f"{key}.")), message


class TestEveryKey:
    def test_the_cases_cover_every_key_of_the_model(self) -> None:
        assert set(WRONG_TYPE) == set(CORE_KEYS)
        leaves = {k for k, table in CORE_KEYS.items() if not table}
        assert set(WRONG_VALUE) | NO_WRONG_VALUE == leaves
        assert not set(WRONG_VALUE) & NO_WRONG_VALUE

    @pytest.mark.parametrize(("key", "value"), cases(WRONG_TYPE))
    def test_a_wrong_type_names_the_key(self, key: str, value: Any) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse(nested(key, value))
        assert_names_the_key(str(caught.value), key)

    @pytest.mark.parametrize(
        "key", [k for k, t in ALL_KEYS.items() if k.partition(".")[0] in SOURCES and not t]
    )
    def test_a_wrong_type_in_any_source_table_names_the_key(self, key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse(nested(key, [{"x": 1}]))
        assert_names_the_key(str(caught.value), key)

    @pytest.mark.parametrize(("key", "value"), cases(WRONG_VALUE))
    def test_a_wrong_value_names_the_key(self, key: str, value: Any) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse(nested(key, value))
        assert_names_the_key(str(caught.value), key)

    @pytest.mark.parametrize("table", [k for k, t in ALL_KEYS.items() if t] + [""])
    def test_an_unknown_key_in_each_table_names_it(self, table: str) -> None:
        key = f"{table}.colour" if table else "colour"
        with pytest.raises(ConfigError) as caught:
            config.parse(nested(key, "blue"))
        assert str(caught.value) == f"{key}: unknown key"

    def test_initial_interval_above_max_interval_names_both(self) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse({"polling": {"initial_interval": 2, "max_interval": 1}})
        message = str(caught.value)
        assert_names_the_key(message, "polling")
        assert "initial_interval" in message

    @pytest.mark.parametrize("key", ["output_dir", "state_dir"])
    def test_a_path_with_a_nul_byte_is_refused(self, key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse({key: "/run/net\x00plan"})
        assert_names_the_key(str(caught.value), key)

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("ec2.endpoint", "http://"),
            ("ec2.endpoint", "http://169.254.169.254:99999"),
            ("ec2.fallback_endpoint", "http://[fd00:ec2::254"),
            ("cloudstack.endpoint", "http:// 10.1.1.1"),
        ],
    )
    def test_an_endpoint_that_is_no_url_is_refused(self, key: str, value: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config.parse(nested(key, value))
        assert_names_the_key(str(caught.value), key)


# --- the command line --------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # nan and inf are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml(doc: Mapping[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def safe_base(tmp: Path) -> dict[str, Any]:
    """A valid configuration that, if it ever ran, could not touch the host: no NIC is
    eligible, the metadata endpoint is a closed loopback port, nothing is applied."""
    return {
        "cloud": "ec2",
        "output_dir": str(tmp / "out"),
        "state_dir": str(tmp / "state"),
        "apply": False,
        "interfaces": {"ignore": ["*"]},
        "ec2": {"endpoint": "http://127.0.0.1:9", "fallback_endpoint": ""},
        "polling": {"deadline": 1},
    }


def with_key(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    if not rest:
        return {**doc, head: value}
    return {**doc, head: {**doc.get(head, {}), rest: value}}


#: A representative set: top-level and table keys, wrong types and wrong values, a table
#: given as a scalar, an unknown key, NaN.
COMMAND_CASES = [
    ("cloud", "nimbus"),
    ("output_dir", "run/netplan"),
    ("state_dir", 5),
    ("apply", "yes"),
    ("resync_interval", 0),
    ("resync_interval", math.nan),
    ("interfaces.ignore", "docker*"),
    ("interfaces.exclude_macs", ["0a:00:00:00:00"]),
    ("interfaces.exclude_device_numbers", ["7-2"]),
    ("udev.source", "both"),
    ("ec2.endpoint", "ftp://127.0.0.1"),
    ("ec2.token_ttl", 3600.5),
    ("netplan", "networkd"),
    ("polling.stable_polls", 0),
    ("polling.deadline", "60"),
    ("polling.colour", "blue"),
]


def run_once(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nicreconciled", "--config", str(cfg), "once"],
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestCommandLine:
    def test_once_exits_2_with_one_line_naming_the_key_and_writes_nothing(
        self, tmp_path: Path
    ) -> None:
        runs = []
        for i, (key, value) in enumerate(COMMAND_CASES):
            home = tmp_path / f"case{i}"
            home.mkdir()
            cfg = home / "nicreconciled.toml"
            cfg.write_text(toml(with_key(safe_base(home), key, value)))
            runs.append((key, home, cfg))
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(run_once, [cfg for _k, _h, cfg in runs]))
        for (key, home, _cfg), result in zip(runs, done, strict=True):
            assert result.returncode == 2, (key, result.returncode, result.stderr[-500:])
            assert result.stdout == ""
            assert result.stderr.count("\n") == 1, (key, result.stderr)
            assert result.stderr.startswith(f"nicreconciled: error: config: {key}"), result.stderr
            assert sorted(p.name for p in home.iterdir()) == ["nicreconciled.toml"]

    def test_invalid_toml_and_a_missing_file_exit_2_with_one_line(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.toml"
        bad.write_text('output_dir = "/tmp/x"\ncloud = \n')
        for cfg in (bad, tmp_path / "absent.toml"):
            result = run_once(cfg)
            assert result.returncode == 2
            assert result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith(f"nicreconciled: error: config: {cfg}")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]

    def test_a_nul_in_output_dir_exits_2_not_with_a_traceback(self, tmp_path: Path) -> None:
        cfg = tmp_path / "nicreconciled.toml"
        cfg.write_text(toml(with_key(safe_base(tmp_path), "output_dir", f"{tmp_path}/o\x00ut")))
        result = run_once(cfg)
        assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr[-300:]
