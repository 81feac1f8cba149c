"""The plugin shape: every registered cloud keeps the contract, and a new cloud is one file.

``tests/unit/toycloud/source.py`` is a fifth cloud as a contributor would write it; these
tests register it with one line (the registry entry) and show that the configuration, the
source factory, DMI detection and the renderers take it with no other change.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from nicreconciled import config as config_mod
from nicreconciled import sources
from nicreconciled.config import Section
from nicreconciled.errors import ConfigError
from nicreconciled.model import COMMON_FLAG_KINDS, MAX_TABLE, MIN_TABLE
from nicreconciled.render import make_renderer
from nicreconciled.sim import SIMULATORS, simulator_class
from nicreconciled.sources.http import HttpClient
from tests.unit.toycloud.source import ToyConfig, ToySource

TOY = "tests.unit.toycloud.source:ToySource"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The one line a new cloud adds to the registry (and its place in the auto order)."""
    monkeypatch.setitem(sources.SOURCES, "toy", TOY)
    monkeypatch.setattr(sources, "AUTO_ORDER", (*sources.AUTO_ORDER, "toy"))
    sources.source_class.cache_clear()
    yield
    sources.source_class.cache_clear()


@pytest.mark.parametrize("name", list(sources.SOURCES))
class TestEveryRegisteredCloud:
    def test_its_class_keeps_the_contract(self, name: str) -> None:
        cls = sources.source_class(name)
        assert cls.name == name
        assert issubclass(cls.Settings, Section)
        assert cls.Settings() == cls.Settings(), "every key of its table has a default"
        assert COMMON_FLAG_KINDS <= cls.FLAG_KINDS
        assert isinstance(cls.ONE_ANSWER, bool)
        for method in ("from_config", "dmi_says", "detect", "fetch", "probe", "close"):
            assert callable(getattr(cls, method)), method
        assert inspect.iscoroutinefunction(cls.fetch)

    def test_its_table_refuses_unknown_keys_by_name(self, name: str) -> None:
        with pytest.raises(ConfigError) as caught:
            config_mod.parse({name: {"colour": "blue"}})
        assert str(caught.value) == f"{name}.colour: unknown key"

    def test_dmi_of_an_empty_machine_names_no_cloud(self, name: str, tmp_path: Path) -> None:
        assert sources.source_class(name).dmi_says(tmp_path) is not True

    def test_it_is_in_the_auto_order_once(self, name: str) -> None:
        assert sources.AUTO_ORDER.count(name) == 1

    def test_it_has_a_simulator(self, name: str) -> None:
        assert name in SIMULATORS
        sim = simulator_class(name)
        assert isinstance(sim.READY_KEY, str)
        assert sim.READY_KEY


class TestAFifthCloud:
    def test_its_table_is_validated_by_its_own_model(self, toy: None) -> None:
        config = config_mod.parse({"cloud": "toy", "toy": {"endpoint": "http://127.0.0.1:9"}})
        assert config.section(ToyConfig).endpoint == "http://127.0.0.1:9"
        with pytest.raises(ConfigError) as caught:
            config_mod.parse({"toy": {"endpoint": "ftp://x"}})
        assert str(caught.value).startswith("toy.endpoint: ")
        with pytest.raises(ConfigError, match=r"^toy\.colour: unknown key$"):
            config_mod.parse({"toy": {"colour": 1}})

    def test_a_file_that_spells_out_the_defaults_equals_no_file(self, toy: None) -> None:
        assert config_mod.parse({"toy": {"endpoint": "http://192.0.2.1"}}) == config_mod.Config()

    def test_an_unregistered_name_is_no_cloud(self) -> None:
        with pytest.raises(ConfigError, match=r"^cloud: .*must be one of"):
            config_mod.parse({"cloud": "toy"})
        with pytest.raises(ConfigError, match=r"^toy: unknown key$"):
            config_mod.parse({"toy": {}})

    async def test_dmi_selects_it_before_any_probe(self, toy: None, tmp_path: Path) -> None:
        dmi = tmp_path / "class" / "dmi" / "id"
        dmi.mkdir(parents=True)
        (dmi / "sys_vendor").write_text("Toy Cloud\n")
        http = HttpClient.from_polling(10, 0.2)
        try:
            # Every other cloud's probe would time out against these addresses; DMI answers
            # first, so no request is sent at all.
            source = await sources.select_source(config_mod.Config(), http, sys_root=tmp_path)
            assert isinstance(source, ToySource)
            assert http.requests_sent == 0
        finally:
            await http.close()

    async def test_its_nics_render_with_every_renderer(self, toy: None) -> None:
        app = web.Application()
        body = '{"0a:00:00:00:00:01": "10.9.0.5/24", "0a:00:00:00:00:02": "10.9.1.5/24"}'
        hits: list[str] = []

        async def nics(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(text=body)

        app.router.add_get("/nics", nics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        config = config_mod.parse({"cloud": "toy", "toy": {"endpoint": f"http://127.0.0.1:{port}"}})
        http = HttpClient.from_polling(10, 2.0)
        try:
            source = sources.make_source("toy", config, http)
            first = await source.fetch("0a:00:00:00:00:01")
            second = await source.fetch("0a:00:00:00:00:02")
            assert hits == ["/nics"], "one document for both NICs"
            assert first.state is not None
            assert first.state.primary
            assert second.state is not None
            assert second.state.route_table == 20001
            assert MIN_TABLE <= second.state.route_table <= MAX_TABLE
            for renderer in ("netplan", "networkmanager", "networkd"):
                text = make_renderer(config.model_copy(update={"renderer": renderer})).render(
                    second.state
                )
                assert "10.9.1.5" in text, renderer
                assert "20001" in text, renderer
        finally:
            await http.close()
            await runner.cleanup()
