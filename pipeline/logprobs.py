"""Reading an API teacher's log-probabilities: the option distribution of a closed answer set, compact top-k for free text.

    soft, outside = option_distribution(answer.logprobs, options, label)   # {option: prob} renormalised, mass outside
    topk = compact_topk(answer.logprobs)                                    # labels.jsonl `topk` of a free-text row

`positions` are TeacherAnswer.logprobs: per answer token [token, logprob, [[alternative, logprob], ...]], strings
as the API sends them (" positive" with its leading space, "ent" + "ail" + "ment" for a label of three tokens).

Closed sets: the answer starts after the last "Final answer:" (chain of thought), else at the first character; the
label the answer was parsed to is looked for from there (so "The answer is positive" reads the token of
"positive"). At the token holding that character, every alternative (the written token included) is matched to
the options: leading spaces, markdown and case are ignored, and an alternative counts for an option when it is
the option or the start of exactly one option ("ent" -> entailment; "neu" shared by two options counts for
neither). Probabilities of alternatives of the same option add up; options missing from the top-k get none;
the result is renormalised over the options and the mass outside them (1 - the options' share at that token,
including what fell outside the top-k) is reported with it.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["option_distribution", "answer_offset", "compact_topk", "ROUND"]

ROUND = 5  # decimals kept of each stored log-probability
_MARKER = re.compile(r"final\s+answer\s*(?:is)?\s*[:：]", re.I)
_LEAD = " \t\r\n*_`\"'“‘([#>"  # what may precede an answer's first letter


def answer_offset(text: str, label: str | None) -> int:
    """Where the final answer starts in `text`: after the last "Final answer:", at the label's first occurrence there."""
    found = list(_MARKER.finditer(text))
    start = found[-1].end() if found else 0
    if label:
        m = re.compile(r"(?<!\w)" + re.escape(label), re.I).search(text, start)
        if m:
            return m.start()
    while start < len(text) and text[start] in _LEAD:
        start += 1
    return start


def _option_of(piece: str, options: list[str]) -> str | None:
    """The one option an alternative's text identifies (its whole label, or the start of exactly one label)."""
    r = piece.lstrip(_LEAD).lower()
    if not r:
        return None
    exact = [o for o in options if o.lower() == r]
    if exact:
        return exact[0]
    hits = [o for o in options if o.lower().startswith(r) or (r.startswith(o.lower()) and not r[len(o):][:1].isalnum())]
    return hits[0] if len(hits) == 1 else None


def option_distribution(positions: list[Any] | None, options: list[str] | None,
                        label: str | None = None) -> tuple[dict[str, float] | None, float | None]:
    """({option: probability} renormalised over the options, probability mass outside them) read at the answer
    token; (None, None) when there are no logprobs or no option got any mass."""
    if not positions or not options:
        return None, None
    tokens = [str(p[0]) for p in positions]
    text = "".join(tokens)
    at = answer_offset(text, label)
    start = 0
    for i, tok in enumerate(tokens):
        if start <= at < start + len(tok):
            break
        start += len(tok)
    else:
        return None, None
    prefix = text[start:at]  # what the answer token holds before the answer (a space, "**")
    alternatives = {tokens[i]: float(positions[i][1])}  # the written token, then the other top-k ones
    for alt, lp in positions[i][2] or []:
        alternatives.setdefault(str(alt), float(lp))
    mass: dict[str, float] = {}
    for alt, lp in alternatives.items():
        if alt.startswith(prefix):
            piece = alt[len(prefix):]
        elif not prefix.strip(_LEAD):
            piece = alt
        else:
            continue
        option = _option_of(piece, options)
        if option is not None:
            mass[option] = mass.get(option, 0.0) + math.exp(lp)
    inside = sum(mass.values())
    if inside <= 0:
        return None, None
    soft = {o: round(mass.get(o, 0.0) / inside, 6) for o in options}
    return soft, round(max(0.0, 1.0 - inside), 6)


def compact_topk(positions: list[Any] | None) -> list[list[list[Any]]] | None:
    """Per answer token [[token, logprob], [alternative, logprob], ...]: the written token first, each string once."""
    if not positions:
        return None
    out = []
    for tok, lp, alts in positions:
        pairs = {str(tok): round(float(lp), ROUND)}
        for alt, alp in alts or []:
            pairs.setdefault(str(alt), round(float(alp), ROUND))
        out.append([[t, v] for t, v in pairs.items()])
    return out
