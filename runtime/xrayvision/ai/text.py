"""The model's text services: CHK (positive, severity, confidence, summary of a report
text), TRN (Romanian to English) and ANA (a detailed analysis in four passes).

The fhir role checks and translates each radiologist's report with them, the web role
answers /api/check and /api/analyse, and the report pipeline checks the model's own
report. One instance per process, on the process's one model client.
"""

from __future__ import annotations

import hashlib

from cachetools import LRUCache

from xrayvision.ai.client import ModelClient
from xrayvision.ai.parse import Check, parse_check
from xrayvision.ai.prompts import Prompts


def check_messages(prompts: Prompts, report: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": prompts.chk}, {"role": "user", "content": report}]


class TextServices:
    """Raises what :meth:`ModelClient.chat` raises (ModelUnavailable, ModelError...)."""

    def __init__(self, client: ModelClient, prompts: Prompts, *,
                 translation_cache: int = 1024) -> None:
        self.client = client
        self.prompts = prompts
        self.translations: LRUCache[str, str] = LRUCache(maxsize=translation_cache)

    async def check_report(self, text: str) -> Check:
        """CHK of any report text (severity -1 when the answer has no usable JSON)."""
        result = await self.client.chat(check_messages(self.prompts, text), call="check",
                                        temperature=0.0, max_tokens=256)
        return parse_check(result.text)

    async def translate_report(self, text: str) -> str:
        """TRN: Romanian to English, cached by the text's hash (bounded LRU): the poller
        sees an amended report's unchanged text again."""
        key = hashlib.sha256(text.encode()).hexdigest()
        cached = self.translations.get(key)
        if cached is not None:
            return cached
        result = await self.client.chat(
            [{"role": "system", "content": self.prompts.trn}, {"role": "user", "content": text}],
            call="translate", temperature=0.0, max_tokens=2048)
        translated = result.text.strip()
        self.translations[key] = translated
        return translated

    async def detailed_analysis(self, text: str) -> dict[str, str]:
        """ANA: overview -> detail -> critique -> assessment, each pass seeing the earlier
        ones."""
        passes: dict[str, str] = {}
        for step in ("OVERVIEW", "DETAIL", "CRITIQUE", "ASSESSMENT"):
            earlier = "\n\n".join(f"{k}:\n{v}" for k, v in passes.items())
            user = f"Report:\n{text}\n\n{earlier}\n\nStep: {step}".replace("\n\n\n", "\n\n")
            result = await self.client.chat(
                [{"role": "system", "content": self.prompts.ana},
                 {"role": "user", "content": user}], call="analyse", max_tokens=768)
            passes[step.lower()] = result.text.strip()
        return passes
