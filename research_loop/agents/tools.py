"""The LLM agent's three tools (view_file, edit_train, submit) as plain Python, testable without HTTP.

Safety lives here, not in the prompt: view_file opens only a fixed allowlist of files inside the repo
(plus the last run's log), never through a link, and redacts what it shows; edit_train changes an in-memory
copy of train.py; nothing writes files. Every LLM backend offers these same three tools.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from research_loop.records.integrity import FIXED_FILES

from ..hygiene import (
    code_problem,
    collapse_whitespace,
    encoding_problem,
    line_problem,
    printable,
    size_problem,
)
from ..redact import redact
from ..safe_io import UnsafeFile, read_text

# The files view_file may open, relative to the repository root.
READABLE_FILES = ("train.py", "program.md", "CURRENT_STATE.md", "results.tsv", *FIXED_FILES)
LOG_ALIAS = "run.log"  # what the model may call the last run's log, wherever the loop put it

MAX_VIEW_CHARS = 60_000  # a view costs tokens on every later turn; files past this are cut
MAX_LOG_CHARS = 20_000  # logs are read from the end, where the error and the summary block are
MAX_DIRECTION_CHARS = 40
MAX_HYPOTHESIS_CHARS = 2_000

# Tool definitions (JSON schema); each backend wraps them in its own format.
TOOL_SPECS: list[dict] = [
    {
        "name": "view_file",
        "description": (
            "Read one file of the project. Readable: "
            + ", ".join(READABLE_FILES)
            + f", and {LOG_ALIAS} (the last training run's log). train.py shows your edits so far. "
            "Paths are relative to the repository root; anything else is refused."
        ),
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "e.g. train.py or run.log"}},
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "edit_train",
        "description": (
            "Replace exactly one occurrence of `old` with `new` in train.py (the only file you may change). "
            "`old` must match the current text exactly, whitespace included, and occur once: add "
            "surrounding lines if it occurs more than once. Several edits may be made before submitting."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "old": {"type": "string", "description": "exact text to replace; must occur exactly once"},
                "new": {"type": "string", "description": "replacement text"},
            },
            "required": ["old", "new"],
            "additionalProperties": False,
        },
    },
    {
        "name": "submit",
        "description": (
            "Finish this proposal: the edited train.py will be trained and scored. Call it once, after "
            "your edits."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "hypothesis": {
                    "type": "string",
                    "description": "one or two sentences: what you changed and why it should raise strict F1",
                },
                "direction": {
                    "type": "string",
                    "description": "a short label for the kind of change, e.g. 'learning rate', 'loss', "
                    "'post-processing', 'model', 'regularization'",
                },
            },
            "required": ["hypothesis", "direction"],
            "additionalProperties": False,
        },
    },
]
TOOL_ARGUMENTS = {spec["name"]: tuple(spec["input_schema"]["required"]) for spec in TOOL_SPECS}


class ToolError(Exception):
    """A tool call the model got wrong; the message goes back to it as an error tool_result."""


@dataclass
class ToolResult:
    content: str
    is_error: bool = False


@dataclass
class Submission:
    hypothesis: str
    direction: str


class ToolSession:
    """One proposal's tool state: the in-memory train.py, the files it may read, and the submission."""

    def __init__(self, repo: Path, train_py: str, last_log_path: Path | None = None):
        self.repo = Path(repo).resolve()
        self.original_train_py = train_py
        self.train_py = train_py
        self.last_log_path = self._absolute(last_log_path) if last_log_path else None
        self.unchanged_submits = 0
        self.submission: Submission | None = None

    # ----- dispatch -----

    def call(self, name: str, arguments: object) -> ToolResult:
        """Run one tool call; unknown tools and bad arguments come back as error results, never run."""
        try:
            if self.submission is not None:
                raise ToolError("the proposal was already submitted; no further tool calls are run")
            if name not in TOOL_ARGUMENTS:
                raise ToolError(f"unknown tool {name!r}; the tools are {', '.join(TOOL_ARGUMENTS)}")
            kwargs = check_arguments(name, arguments)
            for key, value in kwargs.items():  # nothing that cannot be encoded is applied or echoed back
                problem = encoding_problem(value)
                if problem:
                    raise ToolError(f"{name}: `{key}` has {problem}; send plain UTF-8 text")
            return ToolResult(getattr(self, name)(**kwargs))
        except ToolError as err:
            return ToolResult(f"error: {err}", is_error=True)

    # ----- the tools -----

    def view_file(self, path: str) -> str:
        key = normalise_request(path)
        if key == "train.py":
            return self.train_py  # the model's own working copy, edits included
        if key in READABLE_FILES:
            return printable(redact(clip_head(read_regular_file(self.repo / key, must_be_in=self.repo), key)))
        if self.last_log_path is not None and key in self._log_names():
            return printable(redact(clip_tail(read_regular_file(self.last_log_path, single_link=True), key)))
        allowed = ", ".join((*READABLE_FILES, LOG_ALIAS) if self.last_log_path else READABLE_FILES)
        raise ToolError(f"{path!r} is not readable; readable files: {allowed}")

    def edit_train(self, old: str, new: str) -> str:
        if not old:
            raise ToolError("`old` is empty; give the exact text to replace")
        if old == new:
            raise ToolError("`old` and `new` are identical; nothing would change")
        matches = count_occurrences(self.train_py, old)
        if matches != 1:
            hint = "copy it exactly from train.py" if matches == 0 else "add surrounding lines to make it unique"
            raise ToolError(f"`old` matches {matches} times in train.py (must match exactly once); {hint}")
        start = self.train_py.index(old)
        edited = self.train_py[:start] + new + self.train_py[start + len(old) :]
        too_large = size_problem(edited)
        if too_large:
            raise ToolError(f"the edit would make train.py {too_large}; not applied, make a smaller change")
        self.train_py = edited
        first = self.train_py.count("\n", 0, start) + 1
        last = first + new.count("\n")
        return f"ok: replaced 1 occurrence; train.py lines {first}-{last} now read:\n{new}"

    def submit(self, hypothesis: str, direction: str) -> str:
        for name, value in (("hypothesis", hypothesis), ("direction", direction)):
            problem = line_problem(value)
            if problem:
                raise ToolError(f"`{name}` has {problem}; use plain text")
        problem = code_problem(self.train_py)
        if problem:
            raise ToolError(f"train.py has {problem}; fix it with edit_train")
        hypothesis, direction = collapse_whitespace(hypothesis), collapse_whitespace(direction)
        if not hypothesis or not direction:
            raise ToolError("`hypothesis` and `direction` must both be non-empty")
        if len(direction) > MAX_DIRECTION_CHARS:
            raise ToolError(f"`direction` is a short label (at most {MAX_DIRECTION_CHARS} characters)")
        if len(hypothesis) > MAX_HYPOTHESIS_CHARS:
            raise ToolError(f"`hypothesis` is too long (at most {MAX_HYPOTHESIS_CHARS} characters)")
        if self.train_py == self.original_train_py:
            self.unchanged_submits += 1
            raise ToolError("train.py is unchanged; make your change with edit_train, then submit again")
        try:
            compile(self.train_py, "train.py", "exec")  # compiles only: nothing is executed
        except SyntaxError as err:
            raise ToolError(f"train.py does not compile: line {err.lineno}: {err.msg}; fix it with edit_train")
        self.submission = Submission(hypothesis=hypothesis, direction=direction)
        return "submitted"

    # ----- helpers -----

    def _absolute(self, path: Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.repo / path

    def _log_names(self) -> set[str]:
        """The names the last log answers to: the alias, and its repo-relative path when inside the repo."""
        names = {LOG_ALIAS}
        try:
            names.add(self.last_log_path.relative_to(self.repo).as_posix())
        except ValueError:
            pass
        return names


def check_arguments(name: str, arguments: object) -> dict[str, str]:
    """The tool's arguments as strings, exactly the expected keys; anything else is a ToolError."""
    expected = TOOL_ARGUMENTS[name]
    if not isinstance(arguments, dict):
        raise ToolError(f"{name} takes an object with {', '.join(expected)}")
    unknown = sorted(set(arguments) - set(expected))
    missing = [key for key in expected if key not in arguments]
    if unknown or missing:
        parts = ([f"unknown argument(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing argument(s) {', '.join(missing)}"] if missing else []
        )
        raise ToolError(f"{name}: {'; '.join(parts)}; expected exactly: {', '.join(expected)}")
    wrong_type = [key for key in expected if not isinstance(arguments[key], str)]
    if wrong_type:
        raise ToolError(f"{name}: argument(s) {', '.join(wrong_type)} must be strings")
    return {key: arguments[key] for key in expected}


def normalise_request(path: str) -> str:
    """A requested path as a normalised repo-relative POSIX name; absolute, ~ and .. paths are refused."""
    text = path.strip()
    if not text or "\x00" in text:
        raise ToolError("`path` must be a file name such as train.py")
    if text.startswith("~") or os.path.isabs(text) or PureWindowsPath(text).anchor:
        raise ToolError(f"{path!r}: absolute paths are not allowed; use a repo-relative name such as train.py")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise ToolError(f"{path!r}: '..' is not allowed; only files inside the repository are readable")
    return PurePosixPath(*parts).as_posix()


def read_regular_file(path: Path, must_be_in: Path | None = None, single_link: bool = False) -> str:
    """Text of a regular file that is not a symlink (sitting directly in must_be_in, when given; with one
    hard link only, when single_link)."""
    name = path.name
    if must_be_in is not None and Path(os.path.realpath(path)).parent != must_be_in:
        raise ToolError(f"{name} resolves outside the repository; refused")
    try:
        return read_text(path, single_link=single_link) or f"({name} is empty)"
    except FileNotFoundError:
        raise ToolError(f"{name} does not exist yet") from None
    except UnsafeFile as exc:
        raise ToolError(f"{name}: {str(exc).split(': ', 1)[-1]}") from None
    except OSError as exc:
        raise ToolError(f"{name}: cannot be read ({exc.strerror or exc})") from None


def clip_head(text: str, name: str) -> str:
    if len(text) <= MAX_VIEW_CHARS:
        return text
    return text[:MAX_VIEW_CHARS] + f"\n[... {name} cut here: {len(text) - MAX_VIEW_CHARS} more characters]"


def clip_tail(text: str, name: str) -> str:
    if len(text) <= MAX_LOG_CHARS:
        return text
    return f"[... first {len(text) - MAX_LOG_CHARS} characters of {name} left out]\n" + text[-MAX_LOG_CHARS:]


def count_occurrences(text: str, part: str) -> int:
    """Occurrences of part in text, overlapping ones included (str.count skips those)."""
    count, start = 0, text.find(part)
    while start != -1:
        count += 1
        start = text.find(part, start + 1)
    return count

