"""Parsing a model's skeleton into points, tolerant of how real models write lists.

Accepted: ``1.``, ``1)``, ``(1)``, ``**1.**``, ``Step 1:``, ``Point 1:``, bullets before
numbers, a number alone on its line with the title on the next, doubled numbering
(``1. 1. Relaxation``), bold titles, trailing colons, blank lines, chatter before or
after the list, a whole list on one line (also after a preamble: ``Topics: 1. a, 2. b``).
Numbers inside text (``version 3.8``) and numbered sub-points deeper than the list are
not points. A ``1.`` after the list has begun starts another list (small models write
their outline twice, or a stray line before it); the longest list wins, the first of
equals. Within a list the first occurrence of each number wins, a title repeated word
for word is dropped, and points are renumbered 1..k in order of appearance. A list
without any numbers falls back to its bullet lines. With dependencies on, a trailing
mark such as ``(needs 2, 3)`` becomes edges; unknown references and edges that would
close a cycle are dropped, each with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Outline", "OutlinePoint", "parse_outline"]

_NUMBERED = re.compile(
    r"""^(?P<indent>[ \t]*)
        (?:\#{1,6}\s+)?                        # a markdown heading
        (?:[-*•+]\s+)?                       # a bullet before the number
        (?:\*\*|__)?                          # bold around the number
        (?:(?:step|point|part)\s+)?           # "Step 3:"
        [(\[]?(?P<num>\d{1,3})
        (?:[.):\]]|\s+-\s)(?!\d)              # 1.  1)  1:  1]  "1 - "; never 3.8
        (?:\*\*|__)?
        \s*(?P<title>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*•+]\s+(?P<title>.+)$")
_NEEDS = re.compile(
    r"[(\[]\s*(?:needs|requires|uses|builds\s+on|depends\s+on|after)\s*:?\s*"
    r"(?:points?\s*)?(?P<refs>\d+(?:\s*(?:,|and|&|\+)\s*(?:points?\s*)?\d+)*)\s*[)\]]",
    re.IGNORECASE,
)
_MAX_TITLE = 120
_INLINE = re.compile(r"(?<=\S)\s+(?=(\d{1,2})[.)]\s+\S)")
# "1. 1. Relaxation": the number written twice.
_DOUBLED = re.compile(r"^\s*(?:\*\*|__)?[(\[]?(?P<num>\d{1,3})[.)\]](?:\*\*|__)?(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class OutlinePoint:
    index: int
    title: str
    needs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Outline:
    points: tuple[OutlinePoint, ...]
    warnings: tuple[str, ...] = ()

    def render(self) -> str:
        """The skeleton as the point prompts show it: one ``i. title`` per line."""
        return "\n".join(f"{p.index}. {p.title}" for p in self.points)


def _clean_title(raw: str) -> str:
    title = raw.replace("**", "").replace("__", "").strip()
    title = title.strip("\"'`").strip()
    # "Prioritize tasks: make a list every morning" -> the point is the part before ':'
    head, sep, rest = title.partition(": ")
    if sep and rest and 1 <= len(head.split()) <= 8:
        title = head
    title = re.sub(r"\s+", " ", title).rstrip(" .:;,-–—")
    if len(title) > _MAX_TITLE:
        title = title[:_MAX_TITLE].rsplit(" ", 1)[0].rstrip(" .:;,")
    return title


def _split_inline(text: str) -> str:
    """Put each point of a list written on one line ("1. a 2. b 3. c") on its own line.

    Only a number that continues the count (the last number seen plus one) starts a new
    point, so "Python 3. It is" inside a point about something else stays put.
    """
    out: list[str] = []
    last = 0
    for line in text.splitlines():
        head = _NUMBERED.match(line)
        if head:
            last = int(head.group("num"))
        start = 0
        for match in _INLINE.finditer(line):
            number = int(match.group(1))
            # A list can also begin after a colon ("Differences: 1. Syntax, 2. Speed").
            restart = number == 1 and line[: match.start()].rstrip().endswith(":")
            if (last and number == last + 1) or restart:
                out.append(line[start : match.start()])
                start = match.end()
                last = number
        out.append(line[start:])
    return "\n".join(out)


def _candidates(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """Numbered ``(number, line title)`` pairs at the list's own depth, and bullets."""
    numbered: list[tuple[int, str, int]] = []
    bullets: list[tuple[str, int]] = []
    # A number alone on its line ("1.") waits for its title on the next line.
    waiting: tuple[int, int] | None = None
    for line in _split_inline(text).splitlines():
        if not line.strip():
            continue
        match = _NUMBERED.match(line)
        if match:
            number = int(match.group("num"))
            depth = len(match.group("indent").expandtabs(4))
            title = _undouble(match.group("title"), number)
            if title.strip():
                numbered.append((number, title, depth))
                waiting = None
            else:
                waiting = (number, depth)
            continue
        if waiting is not None:
            numbered.append((waiting[0], line, waiting[1]))
            waiting = None
            continue
        bullet = _BULLET.match(line)
        if bullet:
            bullets.append((bullet.group("title"), len(bullet.group("indent").expandtabs(4))))
    if numbered:
        top = min(depth for _, _, depth in numbered)
        return [(n, t) for n, t, d in numbered if d <= top + 1], []
    if bullets:
        top = min(depth for _, depth in bullets)
        return [], [t for t, d in bullets if d <= top + 1]
    return [], []


def _undouble(title: str, number: int) -> str:
    """``1. 1. Title`` and ``1. [1] Title`` -> ``Title`` (``1. 1. 1. 1.`` -> nothing)."""
    while (doubled := _DOUBLED.match(title)) and int(doubled.group("num")) == number:
        title = title[doubled.end() :]
    return title


def _lists(numbered: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Split numbered lines into lists: a ``1`` after the first line starts a new one."""
    lists: list[list[tuple[int, str]]] = []
    for number, title in numbered:
        if not lists or (number == 1 and lists[-1]):
            lists.append([])
        lists[-1].append((number, title))
    return lists


def _longest_list(numbered: list[tuple[int, str]], warnings: list[str]) -> list[tuple[int, str]]:
    lists = _lists(numbered)
    best = max(lists, key=lambda items: len({n for n, _ in items}))  # the first of equals
    if sum(len(items) > 1 for items in lists) > 1:
        warnings.append(
            f"the skeleton had {len(lists)} numbered lists; used the longest "
            f"({len(best)} lines), not the others"
        )
    raw: list[tuple[int, str]] = []
    seen: set[int] = set()
    for number, title in best:
        if number in seen:
            warnings.append(f"dropped a second point numbered {number}: {title.strip()!r}")
            continue
        seen.add(number)
        raw.append((number, title))
    return raw


def parse_outline(text: str, *, max_points: int = 10, dependencies: bool = False) -> Outline:
    """Turn a skeleton into at most ``max_points`` points (see the module docstring)."""
    warnings: list[str] = []
    numbered, bullets = _candidates(text)
    raw: list[tuple[int, str]] = []
    if numbered:
        raw = _longest_list(numbered, warnings)
    elif bullets:
        warnings.append("the skeleton had no numbers; its bullet lines were used as points")
        raw = [(i + 1, t) for i, t in enumerate(bullets)]

    renumber: dict[int, int] = {}
    titles: list[str] = []
    marks: list[list[int]] = []
    for position, (number, line) in enumerate(raw):
        refs: list[int] = []
        if dependencies:
            for match in _NEEDS.finditer(line):
                refs.extend(int(r) for r in re.findall(r"\d+", match.group("refs")))
        line = _NEEDS.sub("", line)
        title = _clean_title(line)
        if not any(c.isalpha() for c in title):
            warnings.append(f"dropped point {number}: it has no words")
            continue
        earlier = next((t for t in titles if t.casefold() == title.casefold()), None)
        if earlier is not None:
            # Small models repeat themselves; a repeated point would be written twice.
            warnings.append(f"dropped point {number}: it repeats {earlier!r}")
            continue
        folded = title.casefold().rstrip(" .,;:-")
        if position == len(raw) - 1 and any(t.casefold().startswith(folded) for t in titles):
            # The reply ran out of tokens partway through repeating an earlier point.
            warnings.append(f"dropped point {number}: a cut-off repeat of an earlier point")
            continue
        renumber[number] = len(titles) + 1
        titles.append(title)
        marks.append(refs)
    if len(titles) > max_points:
        # Counted after the repeats are gone: ten distinct points beat ten lines.
        warnings.append(f"the skeleton had {len(titles)} points; kept the first {max_points}")
        for number in [n for n, i in renumber.items() if i > max_points]:
            del renumber[number]
        titles, marks = titles[:max_points], marks[:max_points]

    needs: list[list[int]] = []
    for index, refs in enumerate(marks, start=1):
        resolved: list[int] = []
        for ref in refs:
            target = renumber.get(ref)
            if target is None:
                warnings.append(f"point {index} needs point {ref}, which does not exist; ignored")
            elif target == index:
                warnings.append(f"point {index} needs itself; ignored")
            elif target not in resolved:
                resolved.append(target)
        needs.append(resolved)
    _break_cycles(needs, warnings)
    points = tuple(
        OutlinePoint(i + 1, title, tuple(sorted(needs[i]))) for i, title in enumerate(titles)
    )
    return Outline(points, tuple(warnings))


def _break_cycles(needs: list[list[int]], warnings: list[str]) -> None:
    """Drop, in place, every edge that closes a cycle (found by depth-first search)."""
    state = [0] * (len(needs) + 1)  # 0 new, 1 on the current path, 2 done

    def visit(node: int) -> None:
        state[node] = 1
        for target in list(needs[node - 1]):
            if state[target] == 1:
                needs[node - 1].remove(target)
                warnings.append(
                    f"point {node} needs point {target}, which would make a cycle; ignored"
                )
            elif state[target] == 0:
                visit(target)
        state[node] = 2

    for node in range(1, len(needs) + 1):
        if state[node] == 0:
            visit(node)
