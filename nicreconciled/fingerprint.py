"""Canonical serialization and hash of a NicState."""

from __future__ import annotations

import hashlib
import json

from nicreconciled.model import NicState


def canonical(state: NicState | None) -> str:
    if state is None:
        return "null"
    return json.dumps(state.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def fingerprint(state: NicState | None) -> str:
    """16 hex digits; equal for equal states, whatever order the metadata listed things in.

    Address order is part of the state on purpose: the first IPv4 is the primary one.
    """
    return hashlib.sha256(canonical(state).encode()).hexdigest()[:16]
