"""Anatomic region from the ``[regions]`` keyword rules.

Pure: no I/O. Texts are compared case- and accent-insensitively ("Toráce" matches
"torace"), so Romanian descriptions with or without diacritics classify the same.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping


def normalise(text: str) -> str:
    """Lower case, accents removed, separators as spaces."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return " ".join(plain.replace("^", " ").replace("_", " ").split())


def identify_region(rules: Mapping[str, Iterable[str]], texts: Iterable[str]) -> str:
    """The first region whose keyword occurs in the texts, tried in the given order
    (body part first, then protocol and descriptions); "" when none matches."""
    prepared = [(region, [normalise(k) for k in keywords]) for region, keywords in rules.items()]
    for text in texts:
        haystack = normalise(text)
        if not haystack:
            continue
        for region, keywords in prepared:
            if any(k and k in haystack for k in keywords):
                return region
    return ""
