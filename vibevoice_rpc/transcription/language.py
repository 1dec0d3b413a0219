"""Which language a transcript is in: py3langid, offline, imported on first use (≈1 s)."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["UNKNOWN_LANGUAGE", "detect_language"]

UNKNOWN_LANGUAGE = "unknown"
_MIN_LETTERS = 3
_MIN_CONFIDENCE = 0.1
_MAX_CHARS = 20000
# Labels py3langid gives in ISO 639-3 where an ISO 639-1 macrolanguage code exists.
_TO_639_1 = {
    "yue": "zh",
    "wuu": "zh",
    "arz": "ar",
    "ary": "ar",
    "uzs": "uz",
    "sdh": "ku",
    "gug": "gn",
}
_identifier: Any = None
_normalized = False  # whether the identifier's confidence is a probability
_identifier_lock = threading.Lock()


def _language_identifier() -> Any:
    global _identifier, _normalized
    with _identifier_lock:
        if _identifier is None:
            from py3langid import langid

            cls = langid.LanguageIdentifier
            if hasattr(cls, "from_model_file"):  # py3langid ≥ 0.4
                _identifier = cls.from_model_file(langid.MODEL_FILE, norm_probs=True)
                _normalized = True
            elif hasattr(cls, "from_pickled_model"):  # py3langid 0.2–0.3
                _identifier = cls.from_pickled_model(langid.MODEL_FILE, norm_probs=True)
                _normalized = True
            else:  # pragma: no cover - an unknown future API: raw scores, no confidence
                _identifier = langid
        return _identifier


def detect_language(text: str) -> str:
    """The ISO 639-1 code of ``text``'s main language, or ``"unknown"``.

    ``"unknown"`` when there are fewer than 3 letters, when py3langid finds no linguistic content,
    or when its confidence is very low (e.g. a lone "Hallo"). Offline; the first call loads the
    model (≈1 s).
    """
    if not text:
        return UNKNOWN_LANGUAGE
    sample = text[:_MAX_CHARS]
    if sum(1 for ch in sample if ch.isalpha()) < _MIN_LETTERS:
        return UNKNOWN_LANGUAGE
    identifier = _language_identifier()
    code, confidence = identifier.classify(sample)
    if _normalized and float(confidence) < _MIN_CONFIDENCE:
        return UNKNOWN_LANGUAGE
    code = str(code).lower()
    if code in ("zxx", "und", ""):
        return UNKNOWN_LANGUAGE
    return _TO_639_1.get(code, code)
