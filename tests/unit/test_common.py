"""sources/common.py: the text checks every source uses, gather, and SharedAnswer."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from nicreconciled.errors import FetchError, MetadataError
from nicreconciled.sources import common


class TestTextChecks:
    @pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "tab\there", "c1\x85"])
    def test_a_control_character_names_the_key(self, value: str) -> None:
        with pytest.raises(MetadataError, match=r"^k: control character"):
            common.check_text("k", value)

    def test_a_scalar_is_one_line(self) -> None:
        assert common.scalar("k", "  eni-1 \n") == "eni-1"
        with pytest.raises(MetadataError, match=r"^k: more than one line$"):
            common.scalar("k", "a\nb")

    @pytest.mark.parametrize(("value", "number"), [("0", 0), ("07", 7), (99, 99), ("5\n", 5)])
    def test_small_int(self, value: str | int, number: int) -> None:
        assert common.small_int("k", value) == number

    @pytest.mark.parametrize("value", ["100", "-1", "0x1", "1.0", " ", True, 100, -1])
    def test_small_int_refuses(self, value: str | int) -> None:
        with pytest.raises(MetadataError, match=r"^k: not an integer 0\.\.99"):
            common.small_int("k", value)

    def test_lines_parse_dedupe_and_keep_order(self) -> None:
        text = "10.0.0.2\n10.0.0.1\n\n10.0.0.2\n"
        assert common.lines("k", text, IPv4Address, 5) == (
            IPv4Address("10.0.0.2"),
            IPv4Address("10.0.0.1"),
        )

    @pytest.mark.parametrize(
        ("kind", "entry"),
        [
            (IPv6Address, "fe80::1%eth0"),
            (IPv4Network, "10.0.0.0"),
            (IPv4Address, "10.0.0.256"),
            # Found by tests/fuzz: networkd reads Address=0.0.0.0/N as "any free address of
            # its pool", netplan refuses an address with /0.
            (IPv4Address, "0.0.0.0"),
            (IPv6Address, "::"),
            (IPv6Address, "0::0"),
            (IPv4Network, "0.0.0.0/0"),
            (IPv6Network, "::/0"),
        ],
    )
    def test_entries_refuse_what_metadata_never_means(self, kind: type, entry: str) -> None:
        with pytest.raises(MetadataError, match=r"^k: invalid entry"):
            common.entries("k", [entry], kind, 5)

    def test_a_list_longer_than_the_limit_is_garbage(self) -> None:
        with pytest.raises(MetadataError, match=r"^k: 3 entries, more than 2$"):
            common.lines("k", "10.0.0.1\n10.0.0.2\n10.0.0.3", IPv4Address, 2)

    def test_one_needs_exactly_one(self) -> None:
        assert common.one("k", "10.0.0.0/24\n", IPv4Network) == IPv4Network("10.0.0.0/24")
        with pytest.raises(MetadataError, match=r"^k: empty value$"):
            common.one("k", "  ", IPv4Network)

    def test_parse_json_checks_type_and_size(self) -> None:
        assert common.parse_json("d", '{"a": 1}', dict) == {"a": 1}
        with pytest.raises(MetadataError, match=r"^d: expected a JSON list, got dict$"):
            common.parse_json("d", '{"a": 1}', list)
        with pytest.raises(MetadataError, match=r"^d: not JSON"):
            common.parse_json("d", "<html>", dict)
        with pytest.raises(MetadataError, match=r"^d: \d+ bytes, more than"):
            common.parse_json("d", " " * (common.MAX_DOCUMENT + 1), dict)

    @pytest.mark.parametrize("depth", [5_000, 100_000])
    @pytest.mark.parametrize(("opener", "closer"), [("[", "]"), ('{"a":', "}")])
    def test_parse_json_refuses_nesting_deeper_than_the_decoder(
        self, depth: int, opener: str, closer: str
    ) -> None:
        # Found by tests/fuzz: json.loads raised RecursionError (not a ValueError) for a
        # document of a few KiB, and it escaped every parser built on parse_json.
        text = opener * depth + ("1" if closer == "}" else "") + closer * depth
        with pytest.raises(MetadataError, match=r"^d: not JSON \(nested too deeply\)$"):
            common.parse_json("d", text, dict)

    def test_make_state_turns_a_refusal_into_metadata_error(self) -> None:
        with pytest.raises(MetadataError, match=r"^0a:00:00:00:00:01: route_table: "):
            common.make_state(
                mac="0a:00:00:00:00:01", cloud="ec2", primary=False, route_table=5, route_metric=1
            )


class TestGather:
    async def test_every_call_finishes_then_the_first_failure_is_raised(self) -> None:
        finished: list[str] = []

        async def ok(name: str, delay: float) -> str:
            await asyncio.sleep(delay)
            finished.append(name)
            return name

        async def fail() -> str:
            raise FetchError("boom")

        with pytest.raises(FetchError, match="boom"):
            await common.gather([fail(), ok("slow", 0.05)])
        assert finished == ["slow"]
        assert await common.gather([ok("a", 0), ok("b", 0)]) == ["a", "b"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestSharedAnswer:
    async def test_callers_together_share_one_request(self) -> None:
        calls: list[int] = []
        release = asyncio.Event()

        async def load() -> str:
            calls.append(1)
            await release.wait()
            return "doc"

        shared = common.SharedAnswer(load, ttl=0.5, clock=Clock())
        waiting = [asyncio.ensure_future(shared.get()) for _ in range(20)]
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*waiting) == ["doc"] * 20
        assert len(calls) == 1

    async def test_newer_than_sends_again_for_an_answer_sent_too_early(self) -> None:
        clock = Clock()
        answers = iter(["old", "new"])

        async def load() -> str:
            return next(answers)

        shared = common.SharedAnswer(load, ttl=0.5, clock=clock)
        assert await shared.get() == "old"
        clock.now += 0.1
        assert await shared.get() == "old", "fresh enough: cached"
        assert await shared.get(newer_than=clock.now) == "new", "sent before the poll began"

    async def test_an_expired_answer_is_fetched_again(self) -> None:
        clock = Clock()
        count = 0

        async def load() -> int:
            nonlocal count
            count += 1
            return count

        shared = common.SharedAnswer(load, ttl=0.5, clock=clock)
        assert await shared.get() == 1
        clock.now += 0.6
        assert await shared.get() == 2

    async def test_a_failure_is_not_cached(self) -> None:
        results: list[object] = [FetchError("down"), "up"]

        async def load() -> str:
            result = results.pop(0)
            if isinstance(result, Exception):
                raise result
            return str(result)

        shared = common.SharedAnswer(load, ttl=10, clock=Clock())
        with pytest.raises(FetchError, match="down"):
            await shared.get()
        assert await shared.get() == "up"

    async def test_a_cancelled_waiter_does_not_cancel_the_others(self) -> None:
        release = asyncio.Event()

        async def load() -> str:
            await release.wait()
            return "doc"

        shared = common.SharedAnswer(load, ttl=1, clock=Clock())
        first = asyncio.ensure_future(shared.get())
        second = asyncio.ensure_future(shared.get())
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        assert await second == "doc"
