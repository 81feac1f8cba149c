"""NicStates for tests, numbered as their cloud numbers them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nicreconciled.model import NicState
from nicreconciled.sources import cloudstack_parse, ec2_parse


def ec2_state(fields: Mapping[str, Any]) -> NicState:
    """FIELDS with ``network_card`` (default 0) and ``device_number`` turned into the table
    and metric EC2's source gives them (explicit route_table/route_metric win)."""
    data = dict(fields)
    card = data.pop("network_card", 0)
    data.setdefault("cloud", "ec2")
    table, metric = ec2_parse.numbering(data["device_number"], card)
    data.setdefault("route_table", table)
    data.setdefault("route_metric", metric)
    return NicState.model_validate(data)


def cloudstack_state(number: int, fields: Mapping[str, Any]) -> NicState:
    """FIELDS of a CloudStack NIC whose device_numbers() number is NUMBER."""
    table, metric = cloudstack_parse.numbering(number)
    return NicState.model_validate(
        {"cloud": "cloudstack", "route_table": table, "route_metric": metric, **fields}
    )
