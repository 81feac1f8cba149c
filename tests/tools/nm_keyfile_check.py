#!/usr/bin/python3
"""Read NetworkManager keyfiles with libnm, the real consumer, and report what it understood.

Usage: /usr/bin/python3 tests/tools/nm_keyfile_check.py FILE [FILE...]

Run with Debian's system python: libnm's GObject bindings come from the Debian packages
python3-gi and gir1.2-nm-1.0, which a virtualenv does not see.

For each FILE this loads a GLib.KeyFile, hands it to ``NM.keyfile_read`` (the function
NetworkManager's own keyfile plugin is built on) with a handler that records every warning
(libnm drops an unparsable value with a warning and carries on), then ``verify()`` and
``normalize()`` the connection. It prints one JSON list, one object per file, with what was
parsed: ids, MAC, per family the method, addresses, routes (with their ``table`` attribute),
routing rules as libnm prints them, never-default, route-metric. It also lists keys libnm
ignored without a word (a misspelt key is not a warning): every key that is neither a
property of its setting nor one of the keyfile's numbered forms (address1, route1,
route1_options, routing-rule1).

Exit status: 0 every file loaded and verified without warnings or unknown keys; 1 some did
not (details in the JSON); 2 libnm cannot be imported (message on stderr).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

DEBIAN_PACKAGES = "python3-gi gir1.2-nm-1.0"

try:
    import gi

    gi.require_version("NM", "1.0")
    from gi.repository import NM, GLib  # type: ignore[attr-defined]
except (ImportError, ValueError) as exc:
    print(
        f"nm_keyfile_check: cannot import libnm via gi ({exc}); "
        f"install the Debian packages {DEBIAN_PACKAGES} for /usr/bin/python3",
        file=sys.stderr,
    )
    sys.exit(2)

# Keyfile group names that differ from the setting name (nm-settings-keyfile(5) aliases).
GROUP_ALIASES = {"ethernet": "802-3-ethernet", "wifi": "802-11-wireless"}
# The keyfile's own spellings of list properties in [ipv4]/[ipv6].
NUMBERED_KEY = re.compile(r"(?:address|addresses|route|routes)\d*(?:_options)?|routing-rule\d+")


def _unpack(value: Any) -> Any:
    return value.unpack() if isinstance(value, GLib.Variant) else value


def _addresses(s_ip: Any) -> list[str]:
    out = []
    for i in range(s_ip.get_num_addresses()):
        address = s_ip.get_address(i)
        out.append(f"{address.get_address()}/{address.get_prefix()}")
    return out


def _routes(s_ip: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(s_ip.get_num_routes()):
        route = s_ip.get_route(i)
        attributes = {n: _unpack(route.get_attribute(n)) for n in route.get_attribute_names()}
        out.append(
            {
                "dest": route.get_dest(),
                "prefix": route.get_prefix(),
                "next_hop": route.get_next_hop(),
                "metric": route.get_metric(),
                "table": attributes.get("table"),
                "attributes": attributes,
            }
        )
    return out


def _rules(s_ip: Any) -> list[str]:
    flags = NM.IPRoutingRuleAsStringFlags.NONE
    return [
        s_ip.get_routing_rule(i).to_string(flags, None) for i in range(s_ip.get_num_routing_rules())
    ]


def _family(connection: Any, name: str) -> dict[str, Any] | None:
    s_ip = connection.get_setting_by_name(name)
    if s_ip is None:
        return None
    return {
        "method": s_ip.get_method(),
        "addresses": _addresses(s_ip),
        "gateway": s_ip.get_gateway(),
        "routes": _routes(s_ip),
        "rules": _rules(s_ip),
        "never_default": s_ip.get_never_default(),
        "route_metric": s_ip.get_route_metric(),
        "route_table": s_ip.get_route_table(),
        "may_fail": s_ip.get_may_fail(),
    }


def _unknown_keys(keyfile: Any, connection: Any) -> list[str]:
    """Keys libnm skipped silently: not a property of their setting, not a numbered form."""
    unknown = []
    groups, _ = keyfile.get_groups()
    for group in groups:
        keys, _ = keyfile.get_keys(group)
        setting = connection.get_setting_by_name(GROUP_ALIASES.get(group, group))
        if setting is None:
            unknown += [f"{group}.{key}" for key in keys]
            continue
        if group == "user":
            known = set(setting.get_keys())
        else:
            known = {spec.name for spec in setting.list_properties()}
        for key in keys:
            numbered = group in ("ipv4", "ipv6") and NUMBERED_KEY.fullmatch(key)
            if key not in known and not numbered:
                unknown.append(f"{group}.{key}")
    return unknown


def _normalize(connection: Any) -> dict[str, Any]:
    """Normalize a copy; report which settings it had to add or change."""
    before = connection.to_dbus(NM.ConnectionSerializationFlags.ALL).unpack()
    copy = NM.SimpleConnection.new_clone(connection)
    try:
        _, modified = copy.normalize(None)
    except GLib.Error as exc:
        return {"ok": False, "error": exc.message, "added_settings": [], "changed": []}
    after = copy.to_dbus(NM.ConnectionSerializationFlags.ALL).unpack()
    added = sorted(set(after) - set(before))
    changed = sorted(
        f"{name}.{key}"
        for name in set(after) & set(before)
        for key in set(after[name]) | set(before[name])
        if after[name].get(key) != before[name].get(key)
    )
    return {"ok": True, "modified": modified, "added_settings": added, "changed": changed}


def check(path: str) -> dict[str, Any]:
    result: dict[str, Any] = {"file": path, "ok": False, "error": None, "warnings": []}
    try:
        st = os.stat(path)
        result["mode"] = f"{st.st_mode & 0o7777:04o}"
        result["owner_uid"] = st.st_uid
        keyfile = GLib.KeyFile()
        keyfile.load_from_file(path, GLib.KeyFileFlags.NONE)
    except (OSError, GLib.Error) as exc:
        result["error"] = f"cannot load: {exc}"
        return result

    def handler(_kf: Any, _conn: Any, htype: Any, data: Any, *_user_data: Any) -> bool:
        # An exception here would be printed by PyGObject and swallowed, hiding the very
        # warning we are after: record a failure instead.
        try:
            if htype == NM.KeyfileHandlerType.WARN:
                message, severity = data.warn_get()
                group, key, _setting, prop = data.get_context()
                warning = {"severity": severity.value_nick, "message": message}
                warning.update({"group": group, "key": key, "property": prop})
                result["warnings"].append(warning)
        except Exception as exc:
            result["warnings"].append({"severity": "handler-error", "message": repr(exc)})
        return False  # keep reading: report every problem, not just the first

    try:
        connection = NM.keyfile_read(
            keyfile,
            os.path.dirname(os.path.abspath(path)),
            NM.KeyfileHandlerFlags.NONE,
            handler,
            None,
        )
    except GLib.Error as exc:
        result["error"] = f"keyfile_read: {exc.message}"
        return result

    s_con = connection.get_setting_connection()
    s_wired = connection.get_setting_wired()
    s_user = connection.get_setting_by_name("user")
    result.update(
        {
            "id": s_con.get_id() if s_con else None,
            "uuid": s_con.get_uuid() if s_con else None,
            "type": s_con.get_connection_type() if s_con else None,
            "autoconnect": s_con.get_autoconnect() if s_con else None,
            "autoconnect_priority": s_con.get_autoconnect_priority() if s_con else None,
            "autoconnect_retries": s_con.get_autoconnect_retries() if s_con else None,
            "interface_name": s_con.get_interface_name() if s_con else None,
            "mac": s_wired.get_mac_address() if s_wired else None,
            "ipv4": _family(connection, "ipv4"),
            "ipv6": _family(connection, "ipv6"),
            "user": {k: s_user.get_data(k) for k in s_user.get_keys()} if s_user else {},
            "unknown_keys": _unknown_keys(keyfile, connection),
            "normalize": _normalize(connection),
        }
    )
    try:
        connection.verify()
    except GLib.Error as exc:
        result["error"] = f"verify: {exc.message}"
        return result
    result["ok"] = (
        not result["warnings"] and not result["unknown_keys"] and result["normalize"]["ok"]
    )
    return result


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    results = [check(path) for path in argv]
    json.dump(results, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
