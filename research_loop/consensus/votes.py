"""The consensus pass's questions and votes, pure: the prompt for one predicted span, the strict reading of
a model's answer, the vote count that keeps, drops or re-bounds the span, and the BIO tags of what is kept.

An answer is one JSON object: {"decision": "keep"}, {"decision": "drop"}, or {"decision": "rebound",
"first": i, "last": j, "type": T} (i and j the numbers of the span's first and last token, inclusive; type
optional, the span's own by default), with an optional "reason". Anything else is an abstention.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

CONTEXT_TOKENS = 100  # tokens shown on each side of the span (test posts run past 9,000 tokens)
DECISIONS = ("keep", "drop", "rebound")
ANSWER_KEYS = {"keep": {"decision", "reason"}, "drop": {"decision", "reason"},
               "rebound": {"decision", "first", "last", "type", "reason"}}
FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)  # one fenced block is still one object

INSTRUCTIONS = """You check the spans that a named-entity tagger predicted in a post, one span at a time.
The task the tagger was trained for:

{task_card}
For the span you are shown, answer with one JSON object and nothing else:
- {{"decision": "keep"}} when the span is right as it is;
- {{"decision": "drop"}} when it is not an entity of the task;
- {{"decision": "rebound", "first": F, "last": L, "type": "T"}} when an entity is there but its boundaries \
or type are wrong: F and L are the numbers of its first and last token (inclusive, among the tokens shown), \
T one of {types}.
You may add "reason": one short sentence."""


@dataclass(frozen=True, order=True)
class Span:
    """One entity: its type and tokens start..end-1 (end exclusive, as evaluate.spans gives them)."""

    start: int
    end: int
    type: str

    def shown(self) -> dict:
        """The span as answers.jsonl and the prompt number it: first and last token, inclusive."""
        return {"type": self.type, "first": self.start, "last": self.end - 1}


@dataclass(frozen=True)
class Vote:
    """keep or rebound (span: the boundaries voted for), drop, or abstain (problem: why)."""

    decision: str
    span: Span | None = None
    problem: str = ""

    @property
    def supports(self) -> bool:
        return self.decision in ("keep", "rebound")


def abstain(problem: str) -> Vote:
    return Vote("abstain", problem=problem)


def system_prompt(task_card: str, entity_types: list[str]) -> str:
    """The instructions and the task card: the same for every question."""
    return INSTRUCTIONS.format(task_card=task_card.strip() + "\n", types=", ".join(entity_types))


def window(length: int, span: Span) -> tuple[int, int]:
    """The tokens a question shows: the span and CONTEXT_TOKENS on each side (start, end exclusive)."""
    return max(0, span.start - CONTEXT_TOKENS), min(length, span.end + CONTEXT_TOKENS)


def question(tokens: list[str], span: Span) -> str:
    """The post as numbered tokens (an excerpt for long posts), the span between [[ and ]]."""
    low, high = window(len(tokens), span)
    words = []
    for index in range(low, high):
        if index == span.start:
            words.append("[[")
        words.append(f"{index}:{' '.join(str(tokens[index]).split()) or '_'}")
        if index == span.end - 1:
            words.append("]]")
    excerpt = f" (tokens {low} to {high - 1} of {len(tokens)})" if (low, high) != (0, len(tokens)) else ""
    text = " ".join(tokens[span.start:span.end])
    return (f"The post{excerpt}, each token as number:token:\n{' '.join(words)}\n\n"
            f"The predicted span: tokens {span.start} to {span.end - 1}, type {span.type}: \"{text}\"\n"
            "Keep, drop or re-bound it? Answer with the JSON object only.")


def parse_answer(text: str, span: Span, length: int, entity_types: list[str]) -> Vote:
    """A model's answer as a vote; anything but exactly one well-formed object is an abstention saying why."""
    body = text.strip()
    fenced = FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        answer = json.loads(body)
    except ValueError:
        return abstain("not one JSON object")
    if not isinstance(answer, dict):
        return abstain(f"a JSON {type(answer).__name__}, not an object")
    decision = answer.get("decision")
    if decision not in DECISIONS:
        return abstain(f"decision {decision!r} is not keep, drop or rebound")
    extra = sorted(set(answer) - ANSWER_KEYS[decision])
    if extra:
        return abstain(f"{decision} with unexpected keys {', '.join(extra)}")
    if not isinstance(answer.get("reason", ""), str):
        return abstain("reason is not a string")
    if decision == "drop":
        return Vote("drop")
    if decision == "keep":
        return Vote("keep", span)
    first, last, kind = answer.get("first"), answer.get("last"), answer.get("type", span.type)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (first, last)):
        return abstain("rebound needs whole numbers first and last")
    low, high = window(length, span)
    if not low <= first <= last < high:
        return abstain(f"rebound {first}..{last} is not within the tokens shown ({low}..{high - 1})")
    if kind not in entity_types:
        return abstain(f"rebound type {kind!r} is not one of {', '.join(entity_types)}")
    return Vote("rebound", Span(first, last + 1, kind))


def needed_votes(answered: int, min_votes: int | None) -> int:
    """Keep-or-rebound votes a span needs: min_votes, else half of those that answered (rounded up), so a
    span goes only when most of the models that answered vote to drop it (a tie keeps the tagger's span)."""
    return min_votes if min_votes is not None else math.ceil(answered / 2)


def decide(span: Span, votes: list[Vote], min_votes: int | None) -> Span | None:
    """The span's boundaries after the vote, or None when it is dropped. A span no model answered about
    stands as predicted. Among the supporting votes (keep is a vote for the span's own boundaries) the
    boundaries with most votes win; a tie goes to the span's own, then to the most tokens shared with it,
    then to the earliest start, then the earliest end, then the type's name."""
    answered = [vote for vote in votes if vote.decision != "abstain"]
    if not answered:
        return span
    support = Counter(vote.span for vote in answered if vote.supports)
    if sum(support.values()) < needed_votes(len(answered), min_votes):
        return None

    def rank(candidate: Span) -> tuple:
        shared = max(0, min(candidate.end, span.end) - max(candidate.start, span.start))
        return -support[candidate], candidate != span, -shared, candidate.start, candidate.end, candidate.type

    return min(support, key=rank)


def settle(decided: list[tuple[Span, Span | None]]) -> list[Span]:
    """The kept spans of one row, without overlaps: two kept spans that overlap both fall back to their own
    boundaries (the tagger's spans never overlap, so one of them was re-bounded), until none overlap."""
    final = {original: chosen for original, chosen in decided if chosen is not None}
    while True:
        clash = next(((one, other) for one, other in combinations(final, 2)
                      if final[one].start < final[other].end and final[other].start < final[one].end), None)
        if clash is None:
            return sorted(final.values())
        for original in clash:
            final[original] = original


def bio_tags(length: int, spans: list[Span]) -> list[str]:
    """BIO tags of non-overlapping spans; every other token O."""
    tags = ["O"] * length
    for span in spans:
        tags[span.start] = f"B-{span.type}"
        tags[span.start + 1:span.end] = [f"I-{span.type}"] * (span.end - span.start - 1)
    return tags
