"""The TOML configuration file: pydantic models, defaults, and load().

Unknown keys are errors. Every key has a default, so a missing default file means defaults.
The sources' own tables (``[ec2]``, ...) are validated by their sources' models, which the
source registry hands over (``use_source_tables``): config never imports a source.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Literal, Protocol, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from nicreconciled.errors import ConfigError
from nicreconciled.model import Mac

DEFAULT_PATH = Path("/etc/nicreconciled/nicreconciled.toml")
DEFAULT_OUTPUT = {
    "netplan": Path("/run/netplan"),
    "networkmanager": Path("/run/NetworkManager/system-connections"),
    "networkd": Path("/run/systemd/network"),
}


def _int_to_float(value: object) -> object:
    # TOML writes whole seconds as integers; strict floats would refuse them.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


Seconds = Annotated[float, BeforeValidator(_int_to_float)]


class Section(BaseModel):
    """A table of the file: unknown keys are errors, values are not coerced, frozen.

    A source's own table (``[ec2]``, ``[oci]``, ...) is a Section subclass in the source's
    module, named by its ``Settings``; ``Config.section(Kind)`` returns it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_Section = Section
_S = TypeVar("_S", bound=Section)


class SourceTables(Protocol):
    """What the source registry (sources/__init__.py) hands config: the sources' tables."""

    def names(self) -> Collection[str]:
        """The tables' names, which are also the values of ``cloud`` besides "auto"."""
        ...

    def settings(self, name: str) -> type[Section]:
        """The Settings model of table NAME (its source imported on first use)."""
        ...

    def name_of(self, kind: type[Section]) -> str | None:
        """The table whose Settings is KIND; None when it is no registered source's."""
        ...


_source_tables: SourceTables | None = None


def use_source_tables(tables: SourceTables) -> None:
    """Called once by the source registry, when it is imported."""
    global _source_tables
    _source_tables = tables


def _tables() -> SourceTables:
    # Every source module lives in the registry's package, so a Settings class never exists
    # without the registry; only a document naming a table or a cloud needs it.
    if _source_tables is None:
        raise RuntimeError(
            "no source registry handed to config: import nicreconciled.sources first"
        )
    return _source_tables


def check_endpoint(value: str) -> str:
    """An http(s) URL with a host and a valid port, or "" (none)."""
    if not value:
        return value
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must be an http:// or https:// URL without spaces")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.path.strip("/") or port == 0:
        raise ValueError("must be just scheme://host[:port]")
    return value.rstrip("/")


#: Device numbers (EC2 device-number, OCI nicIndex, OpenStack port position) go up to this
#: (NicState.device_number).
MAX_DEVICE_NUMBER = 99

#: An inclusive range of device numbers: (2, 7) for "2-7", (3, 3) for 3 or "3".
DeviceRange = tuple[int, int]


def _device_number(text: str, entry: object) -> int:
    if not (text.isascii() and text.isdigit()):  # no sign, no spaces, no "0x"
        raise ValueError(f'{entry!r} is not a device number or a range such as "2-7"')
    number = int(text)
    if number > MAX_DEVICE_NUMBER:
        raise ValueError(f"{entry!r}: device numbers go from 0 to {MAX_DEVICE_NUMBER}")
    return number


def _device_ranges(value: object) -> tuple[DeviceRange, ...]:
    """[3, "5", "8-11"] -> ((3, 3), (5, 5), (8, 11)); ValueError naming the bad entry."""
    if not isinstance(value, list | tuple):
        raise ValueError('must be a list of device numbers or ranges, e.g. [3, "5-7"]')
    out = []
    for entry in value:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if not 0 <= entry <= MAX_DEVICE_NUMBER:
                raise ValueError(f"{entry!r}: device numbers go from 0 to {MAX_DEVICE_NUMBER}")
            out.append((entry, entry))
        elif isinstance(entry, str):
            low, dash, high = entry.partition("-")
            first = _device_number(low, entry)
            last = _device_number(high, entry) if dash else first
            if last < first:
                raise ValueError(f"{entry!r}: the range is reversed")
            out.append((first, last))
        else:
            raise ValueError(f'{entry!r} is not a device number or a range such as "2-7"')
    return tuple(out)


def format_range(device_range: DeviceRange) -> str:
    first, last = device_range
    return str(first) if first == last else f"{first}-{last}"


def excluded_device_number(ranges: tuple[DeviceRange, ...], number: int | None) -> str | None:
    """The configured range that NUMBER falls in ("2-7"), or None (also for a NIC its cloud
    gives no number)."""
    if number is None:
        return None
    for device_range in ranges:
        if device_range[0] <= number <= device_range[1]:
            return format_range(device_range)
    return None


class InterfacesConfig(_Section):
    ignore: tuple[str, ...] = Field(default=(), strict=False)
    virtual: bool = False
    #: MACs never managed (any case, ":" or "-"), for NICs another tool owns that udev does
    #: not mark (ID_NET_MANAGED_BY / NM_UNMANAGED): never polled, reported as excluded.
    exclude_macs: tuple[Mac, ...] = Field(default=(), strict=False)
    #: Device numbers never managed: 3, "3", "2-7" (EC2's device-number on any network card,
    #: OCI's nicIndex, OpenStack's link order; CloudStack gives none). Known only from the
    #: metadata, so such a NIC is fetched, then reported as excluded, never written.
    exclude_device_numbers: Annotated[tuple[DeviceRange, ...], BeforeValidator(_device_ranges)] = ()

    def excludes_mac(self, mac: str) -> bool:
        return mac in self.exclude_macs


class UdevConfig(_Section):
    source: Literal["udev", "kernel"] = "udev"


class NetplanConfig(_Section):
    #: Which backend netplan hands our YAML to (renderer: on our device entry only).
    backend: Literal["networkd", "NetworkManager"] = "networkd"
    #: netplan's generator program (what ``netplan generate`` runs), called directly with
    #: ``--root-dir``; "": the first of system/netplan.GENERATORS that exists.
    generator: str = ""

    @field_validator("generator")
    @classmethod
    def _generator(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError("must be empty (found) or an absolute path")
        return value


class PollingConfig(_Section):
    """How metadata is polled until it is stable (extension of the contract's keys)."""

    #: The confirming read's delay after a first sighting (issue 22: 0.25 s was most of a
    #: complete NIC's 0.3 s to the kernel). Whatever propagates over seconds is caught by a
    #: red flag, not by this window; amazon-ec2-net-utils re-reads a settling key every 0.1 s.
    initial_interval: Seconds = Field(default=0.1, gt=0, le=60)
    max_interval: Seconds = Field(default=5.0, gt=0, le=600)
    probe_interval: Seconds = Field(default=0.4, gt=0, le=60)
    stable_polls: int = Field(default=2, ge=1, le=20)
    ipv6_grace: Seconds = Field(default=10.0, ge=0, le=3600)
    unlisted_grace: Seconds = Field(default=5.0, ge=0, le=3600)
    deadline: Seconds = Field(default=60.0, gt=0, le=86400)
    request_rate: Seconds = Field(default=300.0, gt=0, le=1000)
    request_timeout: Seconds = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _intervals(self) -> Self:
        if self.initial_interval > self.max_interval:
            raise ValueError("initial_interval must not exceed max_interval")
        return self


class KernelConfig(_Section):
    """Keeping what was applied true in the kernel (keeper.py)."""

    #: Re-apply a managed NIC when something removes its promised addresses, rules or table
    #: routes. False: drift is still detected, logged and shown (phase ``drifting``,
    #: ``check``), and healed only by SIGHUP.
    heal: bool = True
    #: Heals of one NIC per 10 minutes; past it: one warning, no more heals, phase
    #: ``drifting`` until SIGHUP or a metadata change. 0: never heal by itself.
    heal_limit: int = Field(default=5, ge=0, le=1000)


class MetricsConfig(_Section):
    """Prometheus metrics for node_exporter's textfile collector (metrics.py)."""

    #: "" (off) or the ``.prom`` file to write, e.g.
    #: /var/lib/prometheus/node-exporter/nicreconciled.prom (Debian's collector directory).
    textfile: str = ""

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, value: str) -> str:
        if value and not (value.startswith("/") and value.endswith(".prom")):
            raise ValueError("must be empty (off) or an absolute path ending in .prom")
        if value and Path(value).name == ".prom":
            raise ValueError("needs a file name before .prom")
        return value


class Config(_Section):
    #: A registered cloud (``sources.SOURCES``) or "auto".
    cloud: str = "auto"
    #: "auto": what the host uses (wiring.resolve_renderer, at start; logged).
    renderer: Literal["netplan", "networkmanager", "networkd", "auto"] = "auto"
    output_dir: Path | None = None
    state_dir: Path = Path("/var/lib/nicreconciled")
    apply: bool = True
    manage_primary: bool = False
    resync_interval: Seconds = Field(default=60.0, ge=1, le=86400)
    interfaces: InterfacesConfig = InterfacesConfig()
    udev: UdevConfig = UdevConfig()
    netplan: NetplanConfig = NetplanConfig()
    polling: PollingConfig = PollingConfig()
    kernel: KernelConfig = KernelConfig()
    metrics: MetricsConfig = MetricsConfig()
    #: The sources' own tables that differ from their defaults, by name (see section()).
    _sections: dict[str, Section] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _source_tables(cls, data: object, handler: ModelWrapValidatorHandler[Config]) -> Config:
        """A source's table is validated by the source's own Settings model, imported only
        when the document has that table; every other key by this model."""
        if not isinstance(data, dict) or all(key in cls.model_fields for key in data):
            return handler(data)  # no table that could be a source's
        source_tables = _tables()
        names = source_tables.names()
        config = handler({key: value for key, value in data.items() if key not in names})
        tables: dict[str, Section] = {}
        for name in names:
            if name not in data:
                continue
            try:
                tables[name] = source_tables.settings(name).model_validate(data[name])
            except ValidationError as exc:
                errors = [{**e, "loc": (name, *e["loc"])} for e in exc.errors(include_url=False)]
                raise ValidationError.from_exception_data(cls.__name__, errors) from None  # type: ignore[arg-type]
        config._sections = _non_default(tables)
        return config

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str) -> str:
        if value == "auto":
            return value
        names = _tables().names()
        if value not in names:
            raise ValueError(f"must be one of {', '.join([*names, 'auto'])}")
        return value

    def section(self, kind: type[_S]) -> _S:
        """The source's table of type KIND (its defaults when the file has none)."""
        found = self._sections.get(_table_of(kind))
        return found if isinstance(found, kind) else kind()

    def with_sections(self, **tables: Section) -> Config:
        """A copy with these sources' tables (by name: ``ec2=Ec2Config(...)``)."""
        copy = self.model_copy()
        copy._sections = {**self._sections, **_non_default(tables)}
        return copy

    @field_validator("output_dir", "state_dir", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.startswith("/"):
                raise ValueError("must be an absolute path")
            if "\0" in value:
                raise ValueError("must not contain a NUL byte")
            return Path(value)
        return value

    @property
    def effective_output_dir(self) -> Path:
        """Where files go; with ``renderer = "auto"`` only once it is resolved (see wiring)."""
        if self.output_dir is not None:
            return self.output_dir
        return DEFAULT_OUTPUT[self.renderer if self.renderer != "auto" else "netplan"]


def _describe(error: ValidationError, table: str = "") -> str:
    first = error.errors()[0]
    where = ".".join([table, *(str(part) for part in first["loc"])][0 if table else 1 :])
    where = where or "(file)"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    return f"{where}: {first['msg']}"


def _table_of(kind: type[Section]) -> str:
    name = _tables().name_of(kind)
    if name is None:
        raise TypeError(f"{kind.__name__} is no registered source's Settings")
    return name


def _non_default(tables: dict[str, Section]) -> dict[str, Section]:
    # Kept only when they differ from the defaults, so a file that spells every default out
    # equals Config() (packaging/check-deb compares the shipped file with it).
    return {name: table for name, table in tables.items() if table != type(table)()}


def parse(data: dict[str, object]) -> Config:
    """Validate a decoded TOML document; raises ConfigError naming the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load(path: Path | None) -> Config:
    """Load PATH; None means the default path, which may be missing (= all defaults)."""
    explicit = path is not None
    target = path if path is not None else DEFAULT_PATH
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: no such file") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{target}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: not valid TOML: {exc}") from None
    return parse(data)
