"""Secret-looking strings are cut out of anything that goes into a prompt (logs, files the agent views,
results notes): the values of the loop's own secret environment variables, and the shapes of common keys."""

from __future__ import annotations

import os
import re
import unicodedata

SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_", "AWS_", "AZURE_", "GOOGLE_", "GEMINI_", "MISTRAL_", "GROQ_")
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASS", "_CREDENTIALS")
MIN_SECRET_LENGTH = 8  # shorter values (an empty key, "1") would blank out ordinary text
REDACTED = "[redacted]"

# Shapes of keys and tokens: Anthropic/OpenAI (sk-...), Hugging Face (hf_...), GitHub (ghp_/gho_/github_pat_),
# AWS access key ids, Slack, bearer headers, and PEM private keys.
KEY_SHAPES = re.compile(
    r"sk-(?:ant-)?[A-Za-z0-9_\-]{16,}"
    r"|hf_[A-Za-z0-9]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{16,}"
)
PEM_BEGIN, PEM_END = "-----BEGIN ", "-----END "
MAX_REDACTED_CHARS = 2_000_000  # text past this is cut, not scanned (prompts are far smaller)


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(SECRET_PREFIXES) or upper in SECRET_NAMES or upper.endswith(SECRET_SUFFIXES)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of secret-named variables, longest first (so a key is cut before its prefix)."""
    environ = os.environ if environ is None else environ
    values = {value for name, value in environ.items() if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """text with every known secret value and every key-shaped string replaced by [redacted]."""
    if not text:
        return text
    # Full-width and other compatibility forms folded, invisible format characters dropped, so a key cannot
    # slip through as "ｓｋ-ant-..." or with zero-width characters inside it.
    text = "".join(char for char in unicodedata.normalize("NFKC", text[:MAX_REDACTED_CHARS])
                   if unicodedata.category(char) != "Cf")
    for value in secret_values(environ):
        text = text.replace(value, REDACTED)
    return _private_keys(KEY_SHAPES.sub(REDACTED, text))


def _private_keys(text: str) -> str:
    """PEM private key blocks cut out, in one pass over the text (no backtracking regex)."""
    out, position, end = [], 0, -1
    while (start := text.find(PEM_BEGIN, position)) != -1:
        if end < start:
            end = text.find(PEM_END, start)
            if end == -1:
                break  # no block closes after this: nothing more to cut
        if "PRIVATE KEY" not in text[start:start + 80]:
            out.append(text[position:start + len(PEM_BEGIN)])
            position = start + len(PEM_BEGIN)
            continue
        close = text.find("-----", end + len(PEM_END))
        out.append(text[position:start] + REDACTED)
        position = close + 5 if close != -1 else len(text)
    return "".join(out) + text[position:]
