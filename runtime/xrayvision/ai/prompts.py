"""The prompts, loaded once at start from a folder settings can name
(a ConfigMap in Kubernetes)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

FILES = {"rep": "rep_prompt.txt", "usr": "usr_prompt.txt", "rev": "rev_prompt.txt",
         "chk": "chk_prompt.txt", "ana": "ana_prompt.txt", "trn": "trn_prompt.txt"}


class PromptError(Exception):
    """A prompt file is missing, unreadable or empty; the message names it."""


@dataclass(frozen=True)
class Prompts:
    rep: str  # system prompt for the report
    usr: str  # user-turn preamble with the exam context
    rev: str  # second reading of a requeued exam, followed by the previous report
    chk: str  # strict JSON: positive, severity, confidence, summary
    ana: str  # multi-pass analysis
    trn: str  # Romanian -> English

    @functools.cached_property
    def version(self) -> str:
        """Names the prompts a report was read with (12 hex digits of a hash of REP, USR,
        REV and CHK): two reads with the same version were asked the same way."""
        text = "\0".join((self.rep, self.usr, self.rev, self.chk))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_dir() -> Path:
    """``./prompts`` when it exists (the working folder, a container's /app), else the
    source tree's ``prompts/``."""
    here = Path.cwd() / "prompts"
    return here if here.is_dir() else Path(__file__).resolve().parents[3] / "prompts"


def load_prompts(folder: Path | None) -> Prompts:
    folder = folder or default_dir()
    texts = {}
    for f in fields(Prompts):
        path = folder / FILES[f.name]
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptError(f"prompt {path} cannot be read: {exc}") from None
        if not text:
            raise PromptError(f"prompt {path} is empty")
        texts[f.name] = text
    return Prompts(**texts)
