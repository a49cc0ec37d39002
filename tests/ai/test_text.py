"""The text services (CHK, TRN, ANA) against the stub model server."""

import aiohttp

from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.text import TextServices


async def test_check_reads_the_answer(stubs):
    primary, _ = stubs
    async with aiohttp.ClientSession() as session:
        text_services = TextServices(
            ModelClient([Endpoint("primary", primary.url, "m")], session), load_prompts(None))
        check = await text_services.check_report("FINDINGS: displaced fracture")
        assert 0 <= check.severity <= 10
        request = primary.state.requests[0]
        assert request["messages"][0]["role"] == "system"
        assert request["messages"][1]["content"] == "FINDINGS: displaced fracture"
        assert request["temperature"] == 0.0


async def test_translate_is_cached_and_analysis_has_four_passes(stubs):
    primary, _ = stubs
    async with aiohttp.ClientSession() as session:
        text_services = TextServices(ModelClient([Endpoint("primary", primary.url, "m")],
                                                  session), load_prompts(None),
                                     translation_cache=2)
        text = "Fără modificări patologice. Sinusuri costo-diafragmatice libere."
        assert await text_services.translate_report(text) == "[en] " + text
        assert await text_services.translate_report(text) == "[en] " + text
        assert len(primary.state.requests) == 1, "the second translation came from the cache"
        assert primary.state.requests[0]["messages"][1]["content"] == text
        passes = await text_services.detailed_analysis("FINDINGS: fracture")
        assert list(passes) == ["overview", "detail", "critique", "assessment"]
        steps = [r["messages"][1]["content"] for r in primary.state.requests[1:]]
        assert [s.rsplit("Step: ", 1)[1] for s in steps] == [
            "OVERVIEW", "DETAIL", "CRITIQUE", "ASSESSMENT"]
        assert "overview:" in steps[3] and "critique:" in steps[3]  # later passes see earlier
        assert len(text_services.translations) == 1


