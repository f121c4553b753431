"""A model-free router: a few dozen weighted regular expressions, well under a millisecond
a question.

Every rule votes for one label with a weight; the label with the most weight wins, and
the reason names the rules that carried it. Rules are small on purpose, so a wrong
decision can be traced to one line here and fixed there. They were written from the
label definitions (see ``data/router/README.md``) and adjusted on ``train.jsonl`` only.

A tie goes to ``direct``: answering a list question in one pass only loses speed,
while forcing a skeleton on a non-list question hurts the answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigurationError
from ..types import Decision
from .base import DIRECT, SELF_CONSISTENCY, SOT, SOT_DAG, Label, SyncRouter, check_question

__all__ = ["RULES", "KeywordBaseline", "Rule", "RuleRouter", "Verdict", "normalise", "score"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One cue: if ``pattern`` matches the normalised question, ``label`` gets ``weight``."""

    name: str
    label: Label
    weight: float
    pattern: re.Pattern[str]
    numeric: bool = False
    """Marks a numeric problem (math or Fermi estimate): ``math_strategy`` may take it."""


def _rule(name: str, label: Label, weight: float, pattern: str, *, numeric: bool = False) -> Rule:
    return Rule(name, label, weight, re.compile(pattern), numeric)


# Sentence start: the beginning, or just after a full stop / question mark / colon, so
# that "I'm 34 and burnt out. What should I ..." still reads as a request.
_S = r"(?:^|[.!?:]\s+)(?:(?:please|so|ok|okay|hi|hey),?\s+)?"
_NUM_WORD = r"(?:\d+|two|three|four|five|six|seven|eight|nine|ten|twelve|twenty)"
_LANG_NAME = (
    r"(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|ruby|php|kotlin|swift"
    r"|sql|bash|powershell|html|css|react|pandas|numpy|django|flask|pytorch|node\.js"
    r"|git|regex|docker)"
)
# After "in"/"with"/"using", short names are languages too ("in c", "in go", "in r").
_LANG = r"(?:" + _LANG_NAME + r"|c|go|r|shell|node)"

RULES: Final[tuple[Rule, ...]] = (
    # --- sot: the answer is a set of independent points ----------------------------------
    _rule(
        "list-noun",
        SOT,
        2.0,
        r"\b(?:ways|tips|ideas|strategies|advice|factors|reasons|causes|benefits|advantages"
        r"|disadvantages|drawbacks|pros and cons|pluses and minuses|strengths and weaknesses"
        r"|differences|challenges|consequences|implications|effects|impacts|signs|symptoms"
        r"|features|qualities|traits|principles|habits|mistakes|best practices|risks|concerns"
        r"|arguments|things|questions|activities|extensions|patterns|uses|lessons|examples"
        r"|options|sights|attractions|places|suggestions|recommendations)\b",
    ),
    _rule(
        "how-can",
        SOT,
        1.0,
        # Also after a leading clause: "As a parent, how can I ...".
        r"(?:^|[.!?:,;-]\s*)how (?:can|could|should|might) (?!it\b|this\b|that\b)",
    ),
    _rule(
        "how-to-improve",
        SOT,
        1.5,
        r"\b(?:how|what) (?:(?:can|could|do|should|might|must) \w+|i can|we can|to)\b"
        r".{0,50}?\b(?:improve|help|get better"
        r"|become|be more|be less|stay|stays|keep|stop|deal with|cope|handle|overcome|reduce"
        r"|cut down|increase|boost|support|protect|prepare|find|attract|engage|make the most"
        r"|make (?:\w+ ){0,5}(?:more|less|better|faster|feel|work|safer|last))\b",
    ),
    _rule(
        "what-to-consider",
        SOT,
        2.0,
        r"\bwhat (?:should|do|must|can|would) (?:i|we|you|one|a [\w-]+|an [\w-]+|every [\w-]+"
        r"(?: [\w-]+)?) (?:\w+ )?(?:consider|keep in mind|know|look for|focus on|pack|ask"
        r"|bring|avoid|do|watch out for|check)\b|\bwhat should (?:be|go) (?:in|into|on)\b",
    ),
    _rule(
        "counterfactual",
        SOT,
        3.0,
        _S + r"(?:what if|what would happen|what might happen|what could happen"
        r"|how would .{3,80}(?:be different|change|look)|suppose|imagine (?!you\b|you're\b"
        r"|you are\b|yourself\b|being\b)|in a world where|what would .{3,60} look like)",
    ),
    _rule(
        "why-general",
        SOT,
        1.5,
        _S + r"why (?:do|would|might|did|are|were|should) (?!i\b|my\b|this\b|it\b)",
    ),
    _rule(
        "why-important",
        SOT,
        2.0,
        r"\bwhy (?:is|are) .{2,50}\b(?:important|so important|valuable|popular|essential"
        r"|matter|necessary)\b",
    ),
    _rule(
        "affects",
        SOT,
        2.0,
        r"\b(?:affect|affects|affected|influence|influences|influenced|impact|impacts|shape"
        r"|shapes|shaped|transform|transformed)\b",
    ),
    _rule(
        "changes-society",
        SOT,
        1.5,
        r"\bchange(?:d|s)? (?:the way|\w+ (?:society|life|lives|cities|world|culture|industry"
        r"|economy)|(?:society|life|the world|cities))\b",
    ),
    _rule(
        "compare",
        SOT,
        2.0,
        r"\b(?:compare|compared|comparison|contrast|versus|vs\.?|differ|differs|differences"
        r"|distinguish|distinguishes|pros and cons)\b",
    ),
    _rule(
        "basics",
        SOT,
        3.0,
        r"\b(?:basics|fundamentals|key ideas|main ideas|central ideas|key concepts"
        r"|key principles|essentials|overview)\b",
    ),
    _rule("what-makes", SOT, 2.0, _S + r"what makes\b"),
    _rule(
        "what-caused",
        SOT,
        2.0,
        _S + r"what (?:caused|causes|led to|leads to|contributed to|drove|triggered)\b",
    ),
    _rule(
        "main-aspects",
        SOT,
        2.0,
        _S + r"what (?:are|were) (?:the |some )?(?:main|key|major|primary|biggest|most"
        r"|common|best|important|typical|central|potential|different)\b",
    ),
    _rule(
        "role-or-impact",
        SOT,
        2.0,
        _S + r"what (?:role|roles|impact|impacts|effect|effects|influence) (?:did|does|do|has"
        r"|have|will|might|can|could)\b",
    ),
    _rule(
        "asks-suggestions",
        SOT,
        2.0,
        _S + r"(?:(?:can|could) you )?(?:suggest|recommend|any (?:tips|advice|ideas|suggestions)"
        r"|give me (?:some )?(?:tips|ideas|advice|suggestions))\b",
    ),
    _rule(
        "where-to-start",
        SOT,
        2.0,
        _S + r"where (?:should|do|can) (?:i|we|a|an) \w* ?(?:start|begin)",
    ),
    _rule(
        "would-you-advise",
        SOT,
        3.0,
        r"\bwould you (?:recommend|advise|suggest|show)\b|\bwould you tell (?:a|an|someone|people"
        r"|\w+s who)\b|\bwould you give .{0,25}\b(?:advice|tips)\b"
        r"|\b(?:advice|tips|recommendations) would you\b",
    ),
    _rule(
        "listicle",
        SOT,
        3.0,
        r"\b(?:listing|list of|with) (?:" + _NUM_WORD + r" |some |several )?(?:tips|ways|ideas"
        r"|reasons|things|mistakes)\b",
    ),
    _rule(
        "multi-question",
        SOT,
        3.0,
        r"^(?:what|who|how|why)\b[^?]{3,80}, (?:what|who|how|why|where)\b[^?]{3,80},? and "
        r"(?:what|who|how|why|where|should)\b",
    ),
    # --- sot-dag: a list whose later points build on earlier ones ---------------------------
    _rule(
        "plan-request",
        SOT_DAG,
        3.0,
        _S + r"(?:make|create|design|draw up|lay out|outline|build|draft|develop|put together"
        r"|give me|help me (?:plan|build|design|make|create))\b.{0,70}\b(?:plan|roadmap"
        r"|itinerary|schedule|curriculum|programme|program|progression|timeline|strategy"
        r"|workshop|course)\b",
    ),
    _rule("plan-verb", SOT_DAG, 3.0, _S + r"(?:help me )?plan (?:a|an|the|my|our|how)\b"),
    _rule(
        "period-by-period",
        SOT_DAG,
        2.0,
        r"\b(?:day|week|month|phase|stage|year)[- ]by[- ](?:day|week|month|phase|stage|year)\b",
    ),
    _rule(
        "builds-on",
        SOT_DAG,
        2.0,
        r"\b(?:builds? on|building on|relies on|rely on|relying on|uses? the previous"
        r"|depends? on (?:the )?(?:earlier|previous)|follows? from|deriv(?:e|ing) .{3,60} from"
        r"|based on (?:that|those|these|this|the|what|it))\b",
    ),
    _rule(
        "from-start-to-end",
        SOT_DAG,
        2.0,
        r"\bstarting (?:with|from)\b"
        r"|\bfrom \w+ing\b.{0,50}\bto (?:the )?(?:\w+ing|final|end|finish|launch|results?)\b",
    ),
    _rule(
        "compare-then-choose",
        SOT_DAG,
        # Outweighs the comparison cues it contains (compare, pros and cons).
        4.5,
        r"\b(?:compare|weigh|evaluate|review|look at|pros and cons)\b.{0,160}\b(?:recommend\w*"
        r"|pick|choose|conclude|tell me which|which (?:one|suits|is best|should|would|to)"
        r"|decide|advise|suggest how)\b",
    ),
    _rule(
        "then-build",
        SOT_DAG,
        2.5,
        r"\bthen\b.{0,40}\b(?:use|propose|design|suggest|recommend|choose|pick|decide"
        r"|estimate|write a conclusion|assess|advise|help me decide|tell me which|for each"
        r"|based on)\b",
    ),
    _rule("first-then", SOT_DAG, 2.0, r"\bfirst\b.{0,100}\bthen\b"),
    # --- direct: numbers, code, documents, given text, role-play, short answers -------------
    _rule(
        "math-notation",
        DIRECT,
        4.0,
        r"\d\s*[+*/^×÷=<>]\s*\(?-?\d|\d\s+-\s+\d|\d\s*%|\^\s*\d"
        r"|\b(?:[a-z]\([a-z]\)|\d+[a-z]\s*[-+=]|\d+ times \d)",
        numeric=True,
    ),
    _rule(
        "math-words",
        DIRECT,
        3.0,
        r"\b(?:solve|derivative|integrate|integral|probability|equation|least common multiple"
        r"|greatest common (?:divisor|factor)|prime factors?|square root|hypotenuse|area of"
        r"|perimeter|volume of|prove that|how old is|in how many ways|sum of all)\b",
        numeric=True,
    ),
    _rule(
        "numbers-question",
        DIRECT,
        2.5,
        # Anchored, and digits found without backtracking: linear on long input.
        r"^(?=\D*\d\D*\d)(?=.*\b(?:how (?:much|long|many)|what (?:was|is|will|would)|when (?:does"
        r"|will)|worth|cost|convert|split)\b)",
        numeric=True,
    ),
    _rule(
        "fermi",
        DIRECT,
        3.0,
        _S + r"estimate\b|\b(?:estimate (?:how|the number|the amount)|(?:explain|show) your"
        r" reasoning|how long would it take)\b"
        r"|^(?:roughly |about |approximately )?how (?:many|much)\b",
        numeric=True,
    ),
    _rule(
        "code-task",
        DIRECT,
        4.0,
        _S + r"(?:(?:can|could) you )?(?:write|implement|code|create|build|develop|generate"
        r"|make)\b.{0,60}\b(?:function|program|script|class|method|query|regex|regular "
        r"expression|component|dockerfile|unit tests?|pytest|algorithm|one-liner|snippet|code"
        r"|html|css|sql|game|parser|endpoint|view|bash command)\b",
    ),
    _rule("implement", DIRECT, 3.0, _S + r"(?:implement|debug|refactor)\b"),
    _rule(
        "code-syntax",
        DIRECT,
        3.0,
        r"`|=>|==|\.\w+\(|\[\]|\b(?:traceback\b|def \w|import \w|console\.log|for \w+ in \w+"
        r"|(?:type|value|key|index|name|attribute|syntax|runtime|import|zerodivision|assertion"
        r"|reference|recursion)error\b)",
    ),
    _rule(
        "code-howto",
        DIRECT,
        2.5,
        r"\bhow (?:do|can|would|should) (?:i|you|we)\b.{0,60}\b(?:in|with|using) " + _LANG + r"\b",
    ),
    _rule("code-language", DIRECT, 1.0, r"\b" + _LANG_NAME + r"\b(?!\s*(?:developer|project|app))"),
    _rule("fix-it", DIRECT, 2.5, r"\bhow (?:do|can) i fix (?:it|this)\b|\bfix (?:my|this) code\b"),
    _rule(
        "writing-task",
        DIRECT,
        3.5,
        _S + r"(?:(?:can|could|would) you )?(?:help me )?(?:write|draft|compose|pen|create"
        r"|give me|tell me|come up with)\b.{0,40}\b(?:e-?mail|letter|note|message|memo|poem"
        r"|poetry|haiku|limerick|sonnet|verse|lyrics|song|rap|story|stories|tale|novel|plot"
        r"|screenplay|script|dialogue|speech|toast|eulogy|obituary|post|blog|article|essay"
        r"|review|announcement|press release|description|bio|slogan|tagline|riddle|joke"
        r"|invitation|caption|proposal|pitch|newsletter|tweet|page)\b",
    ),
    _rule(
        "rewrite-given-text",
        DIRECT,
        4.0,
        _S + r"(?:rewrite|rephrase|paraphrase|summari[sz]e|translate|proofread|edit|shorten"
        r"|condense|simplify|make this|turn (?:this|these)|convert this|fix the (?:grammar"
        r"|spelling|typos)|correct (?:this|my)|give me a tl;?dr|tl;?dr)\b"
        r"(?=.{0,60}(?:\b(?:this|these|the following|my|it)\b|:|\"))",
    ),
    _rule("given-text", DIRECT, 1.5, r"\"[^\"]{25,}\"|'[^']{25,}'"),
    _rule(
        "role-play",
        DIRECT,
        2.5,
        _S + r"(?:pretend|act as|acting as|role-?play|play the role|you are (?:a|an|my|the)\b"
        r"|you're (?:a|an)\b|imagine (?:you|you're|you are|yourself)\b"
        r"|as (?:a|an) [\w -]{2,30}, [^.?!]{0,40}\byour?\b"
        r"|if you were\b|be (?:a|an|my) )",
    ),
    _rule(
        "procedure",
        DIRECT,
        3.0,
        r"\bstep[- ]by[- ]step\b|\bwalk me through\b|\binstructions\b|\b(?:what are|list) the"
        r" steps\b|\brecipe\b|\bhow (?:do|can|should) (?:i|you|we)\s+(?:install|set up|setup"
        r"|configure|reset|replace|change (?:a|the|my) \w+ tire|tie|bake|cook|perform|transfer"
        r"|repot|file|get (?:it|them) back|restore|update|upgrade|uninstall|connect|unlock"
        r"|jump-start|register|renew|cancel|back up|enable|disable|make (?:a |an |the )?(?:\w+ )?"
        r"(?:bread|omelette|coffee|cake|pasta|soup|pizza|cocktail|tea|cold brew))\b",
    ),
    _rule(
        "mechanism",
        DIRECT,
        2.5,
        r"\bhow (?:does|do|did) (?!i\b|we\b|you\b).{2,60}\bworks?\b(?=\s*(?:[?.,]|$|and\b|to\b))"
        r"|\bexplain how\b|\bwhat happens (?:when|in|if|to)\b|\bexplain the (?:process"
        r"|mechanism|\w+ cycle|cycle)\b|\bhow (?:does|do) (?!i\b|we\b|you\b)(?:a |an |the )?"
        r"[\w']+(?: [\w']+)? (?:keep|stay|stays|float|fly|get|gets|turn|make)\b",
    ),
    _rule(
        "yes-no",
        DIRECT,
        # Weaker than a list cue: "are there any good ways to ..." asks for a list.
        1.5,
        r"^(?:is|are|can|does|do|did|should|will|could|am|was|were|has|have|may|must)"
        r" (?!you\b)(?:\S+ ){0,11}\S+$",
    ),
    _rule(
        "either-or-verdict",
        DIRECT,
        2.5,
        r"^(?:is|are|should|do|does|would|which is|which one is)\b.{0,120}\bor\b",
    ),
    _rule(
        "opinion",
        DIRECT,
        2.5,
        r"\b(?:do you think|what do you think|your (?:opinion|view|favou?rite))\b",
    ),
    _rule(
        "short-fact",
        DIRECT,
        2.0,
        _S + r"(?:who|when|where (?:is|are|was|were|did)|which \w+ (?:is|was|has|had|did"
        r"|does)|which (?:is|was)|what year|what time|how tall|how old|how far|how big"
        r"|how heavy|how deep|what's the (?:capital|chemical|population|boiling|height|name))\b",
    ),
    _rule(
        "definition",
        DIRECT,
        2.0,
        r"^(?:what is|what's|whats|define|meaning of)\b(?: \S+){0,5}$"
        r"|\bwhat does .{1,30} (?:mean|stand for)\b",
    ),
    _rule("name-n", DIRECT, 2.5, r"^(?:name|list) " + _NUM_WORD + r"\b|\bin order\b"),
    _rule(
        "fixed-count", DIRECT, 1.5, r"^what (?:are|were) the " + _NUM_WORD + r" \w+(?: \S+){0,3}$"
    ),
    _rule("superlative-way", DIRECT, 2.0, r"\b(?:fastest|best|easiest|quickest|cheapest) way\b"),
    _rule(
        "chit-chat", DIRECT, 3.0, r"^(?:hi|hello|hey|thanks|thank you|good (?:morning|evening))\b"
    ),
    _rule("very-short", DIRECT, 1.0, r"^\W*(?:\w+\W+){0,3}\w*\W*$"),
)

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "–": "-", "—": "-"})
_SPACE = re.compile(r"\s+")
_KEEP_CHARS = 1000
"""Of a long question only its first and last this many characters are read: the request
sits at one end of a pasted text, and the bound keeps the cost per question flat."""


def normalise(question: str) -> str:
    """Lower case, plain quotes and dashes, single spaces: the text the rules read."""
    if len(question) > 2 * _KEEP_CHARS:
        question = question[:_KEEP_CHARS] + " " + question[-_KEEP_CHARS:]
    return _SPACE.sub(" ", question.translate(_QUOTES)).strip().lower()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules said about one question, before it becomes a ``Decision``."""

    label: Label
    scores: dict[Label, float]
    fired: tuple[Rule, ...]
    numeric: bool


def score(question: str, rules: Sequence[Rule] = RULES) -> Verdict:
    """Run every rule on ``question``; the heaviest label wins, ties go to ``direct``."""
    text = normalise(check_question(question))
    fired = tuple(r for r in rules if r.pattern.search(text))
    scores: dict[Label, float] = {SOT: 0.0, SOT_DAG: 0.0, DIRECT: 0.0}
    for r in fired:
        scores[r.label] += r.weight
    # Order breaks ties: direct first, then sot-dag, then sot.
    label = max((DIRECT, SOT_DAG, SOT), key=lambda lab: scores[lab])
    numeric = label == DIRECT and any(r.numeric for r in fired)
    return Verdict(label, scores, fired, numeric)


class RuleRouter(SyncRouter):
    """Hand-written weighted rules; no model, no I/O. The default router.

    ``math_strategy`` is the strategy for numeric problems (math, Fermi estimates):
    ``"direct"`` by default, ``"self-consistency"`` to sample and vote on them.
    """

    name: str = "rules"

    def __init__(self, *, math_strategy: str = DIRECT, rules: Sequence[Rule] = RULES) -> None:
        if math_strategy not in (DIRECT, SELF_CONSISTENCY):
            raise ConfigurationError(
                f"math_strategy must be {DIRECT!r} or {SELF_CONSISTENCY!r}, got {math_strategy!r}"
            )
        self.math_strategy = math_strategy
        self.rules = tuple(rules)

    def classify(self, question: str) -> Decision:
        """The synchronous core of ``decide``: a few dozen regex searches."""
        verdict = score(question, self.rules)
        strategy: str = verdict.label
        if verdict.numeric and self.math_strategy != DIRECT:
            strategy = self.math_strategy
        return Decision(
            strategy=strategy,
            confidence=_confidence(verdict),
            reason=_reason(verdict),
            router=self.name,
        )


def _confidence(verdict: Verdict) -> float:
    """0.5 when nothing fired or the vote is tied, approaching 1 as the margin grows."""
    ranked = sorted(verdict.scores.values(), reverse=True)
    margin = ranked[0] - ranked[1]
    return round(1.0 - 0.5 * math.exp(-margin / 2.0), 3)


def _reason(verdict: Verdict) -> str:
    if not verdict.fired:
        return "no rule fired; default direct"
    winners = [r for r in verdict.fired if r.label == verdict.label]
    others = [r for r in verdict.fired if r.label != verdict.label]
    text = f"{verdict.label}: " + ", ".join(f"{r.name} (+{r.weight:g})" for r in winners)
    if others:
        text += "; against: " + ", ".join(f"{r.name} ({r.label} +{r.weight:g})" for r in others)
    if verdict.numeric:
        text += "; numeric problem"
    return text


class KeywordBaseline(SyncRouter):
    """The one-line keyword regex a router has to beat: list words mean SoT."""

    name: str = "keyword-baseline"
    _PATTERN: Final = re.compile(
        r"\b(?:how can|ways|tips|strategies|factors|differences|advantages|benefits|pros and cons"
        r"|what if|what are (?:some|the))\b",
        re.IGNORECASE,
    )

    def classify(self, question: str) -> Decision:
        hit = self._PATTERN.search(check_question(question))
        if hit:
            return Decision(
                strategy=SOT, confidence=0.5, reason=f"keyword {hit.group(0)!r}", router=self.name
            )
        return Decision(strategy=DIRECT, confidence=0.5, reason="no keyword", router=self.name)
