"""Values from outside (a webhook, an EHR, a header) quoted in the texts we store and show:
dead-letter errors, quarantine reasons, processing notes. Quoted whole up to a bound, else
their start, an ellipsis and their length: a 5,000-digit id says it is one, without being
copied whole into every row and screen that shows the error."""

from __future__ import annotations

QUOTE_LIMIT = 64


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
