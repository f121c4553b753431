"""Final answers inside free text: find them, and bring equal answers to one form.

Extractors (``extract=`` of ``SelfConsistency``):

- ``"answer-line"``: the last line that starts with ``Answer:`` (also ``Final answer:``,
  ``**Answer:**``);
- ``"last-number"``: the last number in the text (``1,000``, ``-3.5``; not the ``3`` of
  ``x3`` or ``3rd``);
- ``"auto"``: the answer line if there is one, else the last number;
- a compiled regex (or a pattern string with a group): its last match, group 1 if it has
  groups;
- a function ``text -> str | None``.

``normalize_answer`` makes equal answers compare equal: case, whitespace, surrounding
quotes and markdown, trailing punctuation, and number formats (``1,000``, ``1000.0``,
``$1000`` and ``+1000`` are all ``1000``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from ..errors import ConfigurationError

__all__ = [
    "EXTRACTORS",
    "Extract",
    "Extractor",
    "extract_answer_line",
    "extract_last_number",
    "make_extractor",
    "normalize_answer",
]

Extractor = Callable[[str], str | None]
Extract = str | re.Pattern[str] | Extractor

_ANSWER_LINE = re.compile(
    r"^[ \t>#*_-]*(?:final\s+)?answer[*_]*\s*(?:is\s*)?[:=][*_]*[ \t]*(?P<answer>.*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_CANONICAL_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_WRAPPERS = ("**", "__", "`", "$", '"', "'", "“", "”", "‘", "’")
_TRAILING = " \t.,;:!?。"


def extract_answer_line(text: str) -> str | None:
    """The text after the last ``Answer:`` marker at the start of a line, if any."""
    found = None
    for match in _ANSWER_LINE.finditer(text):
        if match.group("answer").strip(" *_"):
            found = match.group("answer")
    return found


def extract_last_number(text: str) -> str | None:
    """The last number written in ``text``, as written (``1,000`` stays ``1,000``)."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace("−", "-") if numbers else None


def _auto(text: str) -> str | None:
    line = extract_answer_line(text)
    return line if line is not None else extract_last_number(text)


EXTRACTORS: dict[str, Extractor] = {
    "answer-line": extract_answer_line,
    "last-number": extract_last_number,
    "auto": _auto,
}


def make_extractor(spec: Extract) -> Extractor:
    """Turn an ``extract=`` setting into a function ``text -> answer | None``."""
    if callable(spec) and not isinstance(spec, re.Pattern):
        return spec
    if isinstance(spec, str):
        if spec in EXTRACTORS:
            return EXTRACTORS[spec]
        if re.fullmatch(r"[\w-]+", spec):
            # A bare word is far more likely a misspelt name than a regex.
            raise ConfigurationError(
                f"unknown extractor {spec!r}; use one of {', '.join(sorted(EXTRACTORS))}, a "
                "regex (re.compile(...) or a pattern with a group), or a function"
            )
        try:
            spec = re.compile(spec, re.IGNORECASE | re.MULTILINE)
        except re.error as exc:
            raise ConfigurationError(f"extract={spec!r} is not a valid regex: {exc}") from None
    if isinstance(spec, re.Pattern):
        pattern = spec

        def by_regex(text: str) -> str | None:
            matches = list(pattern.finditer(text))
            if not matches:
                return None
            return matches[-1].group(1) if pattern.groups else matches[-1].group(0)

        return by_regex
    raise ConfigurationError(
        f"extract must be a name, a regex or a function, got {type(spec).__name__}"
    )


def normalize_answer(answer: str) -> str:
    """One form per answer, so that votes for the same answer are counted together."""
    text = re.sub(r"\s+", " ", answer).strip()
    changed = True
    while changed and text:
        changed = False
        stripped = text.rstrip(_TRAILING)
        for wrapper in _WRAPPERS:
            if len(stripped) > 2 * len(wrapper) and (
                stripped.startswith(wrapper) and stripped.endswith(wrapper)
            ):
                stripped = stripped[len(wrapper) : -len(wrapper)].strip()
        boxed = re.fullmatch(r"\\boxed\{(.*)\}", stripped)
        if boxed:
            stripped = boxed.group(1).strip()
        if re.fullmatch(r"\(([^()]*)\)", stripped):
            stripped = stripped[1:-1].strip()
        if stripped != text:
            text, changed = stripped, True
    number = _canonical_number(text)
    return number if number is not None else text.casefold()


def _canonical_number(text: str) -> str | None:
    """``1,000`` / ``1000.0`` / ``$1000`` / ``+1e3``-free decimal text -> ``1000``."""
    candidate = text.replace("−", "-").removeprefix("$").strip()
    if candidate[:1] in "+-" and candidate[1:2] == "$":
        candidate = candidate[0] + candidate[2:]
    if not _CANONICAL_NUMBER.fullmatch(candidate):
        return None
    try:
        value = Decimal(candidate.replace(",", ""))
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    # normalize() drops trailing zeros; "f" keeps it out of exponent notation (1E+3).
    return format(value.normalize(), "f")
