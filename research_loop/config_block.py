"""train.py's config block: the UPPER_CASE `NAME = <literal>  # comment` lines at its top. Read and rewritten
through Python's own parser (ast), never by regular expressions, so the comment and layout survive."""

from __future__ import annotations

import ast
import json
import re

CONSTANT_LINE = re.compile(r"^[A-Z][A-Z0-9_]*\s*=")


class ConfigBlockError(ValueError):
    """A --set that names no constant, or a value that is not a Python literal; the message is one line."""


def literal(value) -> str:
    """A value as Python source in the config block's style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(key)}: {literal(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    return repr(value)


def read_config(train_py: str) -> dict[str, tuple[int, object]]:
    """name -> (line number, value) for every one-line `NAME = <literal>` at the top level of train.py."""
    config = {}
    for node in ast.parse(train_py).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.isupper() and node.lineno == node.end_lineno):
            try:
                config[node.targets[0].id] = (node.lineno, ast.literal_eval(node.value))
            except ValueError:
                continue  # computed, not a literal: not a knob
    return config


def values(train_py: str) -> dict[str, object]:
    """name -> value of the config block's constants."""
    return {name: value for name, (_, value) in read_config(train_py).items()}


def set_constant(train_py: str, name: str, value) -> str:
    """train.py with the value of `NAME = value  # comment` rewritten, the comment kept."""
    for node in ast.parse(train_py).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name:
            lines = train_py.splitlines(keepends=True)
            line = lines[node.lineno - 1].encode("utf-8")  # ast offsets count UTF-8 bytes
            start, end = node.value.col_offset, node.value.end_col_offset
            lines[node.lineno - 1] = (line[:start] + literal(value).encode("utf-8") + line[end:]).decode("utf-8")
            return "".join(lines)
    raise KeyError(name)


def parse_assignment(text: str) -> tuple[str, object]:
    """`NAME=VALUE` from --set: VALUE is a Python literal (1e-4, "minilm", [1, 2]) or, failing that, a bare
    word taken as a string (--set MODEL_NAME=minilm)."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        raise ConfigBlockError(f"--set {text!r}: expected NAME=VALUE, e.g. --set LEARNING_RATE=1e-4")
    if not name.isupper() or not name.replace("_", "").isalnum():
        raise ConfigBlockError(f"--set {text!r}: {name!r} is not a config constant name (UPPER_CASE)")
    try:
        return name, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[\w./:\-]+", raw):
            return name, raw
        raise ConfigBlockError(f"--set {text!r}: {raw!r} is not a Python literal") from None


def apply_settings(train_py: str, settings: list[tuple[str, object]]) -> str:
    """train.py with each (NAME, value) written into its config block; ConfigBlockError for an unknown NAME."""
    known = read_config(train_py)
    unknown = [name for name, _ in settings if name not in known]
    if unknown:
        raise ConfigBlockError(f"--set {', '.join(unknown)}: train.py's config block has no "
                               f"{' or '.join(unknown)} (it has {', '.join(sorted(known))})")
    for name, value in settings:
        train_py = set_constant(train_py, name, value)
    return train_py


def block_lines(train_py: str) -> list[str]:
    """The config block as written: its constants, with the comment lines (group headings) between them and
    just above the first one."""
    block: list[str] = []
    pending: list[str] = []
    for line in train_py.splitlines():
        stripped = line.strip()
        if CONSTANT_LINE.match(line):
            block += pending + [line]
            pending = []
        elif stripped.startswith("#"):
            pending.append(line)
        elif stripped and block:
            break
        elif stripped or not block:
            pending = []  # code, or a blank line before the block: those comments were not its heading
    return block


def normalised(train_py: str) -> str:
    """train.py's syntax tree: equal for two files that differ only in comments and whitespace."""
    return ast.dump(ast.parse(train_py))
