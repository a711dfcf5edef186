"""Text the loop accepts from an agent: valid UTF-8 without control characters (tabs and newlines aside in
code). Anything else is sent back to the agent with the reason, never passed to compile(), git or a TSV."""

from __future__ import annotations

import re
import unicodedata

# C0 controls except \t \n \r, DEL, C1 controls, the Unicode line/paragraph separators, and the bidi
# overrides and isolates that make code read differently from how it runs ("Trojan Source").
CODE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# In one line of text (a hypothesis, a direction): also zero-width and other invisible format characters.
LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\u00ad]")


def _first(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    line = text.count("\n", 0, match.start()) + 1
    return f"control character {match.group()!r} on line {line}"


def _encoding_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        return f"text that is not valid Unicode ({text[exc.start]!r}, a lone surrogate) on line {line}"
    return None


MAX_TRAIN_PY_BYTES = 512 * 1024  # a train.py larger than this is refused before it is committed


def size_problem(text: str) -> str | None:
    """Why a train.py text is too large to commit and run, or None (its UTF-8 size; lone surrogates count 3)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size <= MAX_TRAIN_PY_BYTES:
        return None
    return f"{size:,} bytes, over the cap of {MAX_TRAIN_PY_BYTES // 1024} KB ({MAX_TRAIN_PY_BYTES:,} bytes)"


def without_surrogates(value: object) -> object:
    """`value` (a str, or lists and dicts of them) with every lone surrogate replaced by U+FFFD: what a
    conversation may repeat to an API whose client must encode it as UTF-8."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {key: without_surrogates(item) for key, item in value.items()}
    return value


SURROGATE = re.compile("[\ud800-\udfff]")


def encoding_problem(text: str) -> str | None:
    """Why a text cannot be encoded as UTF-8 (a lone surrogate), named by its escape and line, or None."""
    return _encoding_problem(text)


def code_problem(text: str) -> str | None:
    """Why a train.py text cannot be accepted as source code, or None."""
    if not isinstance(text, str):
        return "not text"
    return _encoding_problem(text) or _first(CODE_CONTROL, text)


def line_problem(text: str) -> str | None:
    """Why a one-line field (hypothesis, direction) cannot be accepted, or None (newlines are fine: the
    loop folds them into spaces)."""
    if not isinstance(text, str):
        return "not text"
    return _encoding_problem(text) or _first(LINE_CONTROL, text.replace("\n", " ").replace("\t", " "))


def collapse_whitespace(text: str) -> str:
    """Whitespace collapsed to single spaces, so the text fits one line (a results.tsv cell, a subject)."""
    return re.sub(r"\s+", " ", text).strip()


def _unsafe(char: str) -> bool:
    """Control and separator characters, lone surrogates, and invisible format characters (bidi overrides,
    zero-width, soft hyphen: Unicode category Cf), which make text read differently from what it says."""
    code = ord(char)
    return (code < 32 or 0x7F <= code <= 0x9F or char in "\u2028\u2029\u0085" or 0xD800 <= code <= 0xDFFF
            or (code > 0x9F and unicodedata.category(char) == "Cf"))


def plain_text(text: object, limit: int = 2000) -> str:
    """One line of printable text, at most `limit` characters: control, separator and format characters and
    terminal escapes shown as \\uXXXX, never passed on (to a TSV cell, a prompt, a terminal)."""
    out = []
    for char in str(text)[: limit * 2]:
        if char in "\t\n":
            out.append(" ")
        elif _unsafe(char):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def printable(text: str) -> str:
    """A file's text for a prompt: lines and tabs kept, every other unsafe character shown as \\uXXXX."""
    return "".join(f"\\u{ord(char):04x}" if char not in "\t\n" and _unsafe(char) else char for char in text)


def plain_lines(text: str, limit: int = 20_000) -> str:
    """A log tail for a prompt: its own lines kept, each made plain (no terminal escapes or separators)."""
    return "\n".join(plain_text(line, 500) for line in text[-limit:].split("\n"))
