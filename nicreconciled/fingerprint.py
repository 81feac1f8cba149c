"""Canonical serialization and hash of a NicState."""

from __future__ import annotations

import hashlib
import json

from nicreconciled.model import NicState

#: NicState fields that came after fingerprints were first stored.
LATER_FIELDS = ("local_routes", "dhcp_routes")


def canonical(state: NicState | None) -> str:
    if state is None:
        return "null"
    # Fields added since the first release are left out while at their defaults, so that a
    # state which does not use them keeps the fingerprint it had (no re-render at an upgrade).
    fields = NicState.model_fields
    unused = {name for name in LATER_FIELDS if getattr(state, name) == fields[name].default}
    data = state.model_dump(mode="json", exclude=unused)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def fingerprint(state: NicState | None) -> str:
    """16 hex digits; equal for equal states, whatever order the metadata listed things in.

    Address order is part of the state on purpose: the first IPv4 is the primary one.
    """
    return hashlib.sha256(canonical(state).encode()).hexdigest()[:16]
