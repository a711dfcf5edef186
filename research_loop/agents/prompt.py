"""What every LLM backend tells the model: the standing instructions, the first user message of a proposal
(built from a Context), and the short texts the turn policy sends back (a nudge, the last-turn notice).

The wording is the same for every backend, so a night with one model reads like a night with another.
"""

from __future__ import annotations

from .base import Context

INSTRUCTIONS = """\
You are the research agent of an unattended overnight loop that improves a named-entity recognition \
model: a tagger that labels word tokens with BIO tags (the task card, when there is one, says what the \
data is). Each iteration you propose ONE change to train.py, the only file you may change. The loop then \
checks that train.py compiles, trains it, scores its predictions with the fixed scorer (strict span F1 \
on the validation split is the number to beat), appends a row to results.tsv, and keeps or reverts the \
change.

Tools:
- view_file {"path"}: read train.py (your working copy), program.md, CURRENT_STATE.md, results.tsv, \
prepare.py, evaluate.py, or run.log (the last run's log). Nothing else is readable.
- edit_train {"old", "new"}: replace exactly one occurrence of `old` in train.py.
- submit {"hypothesis", "direction"}: end the proposal. `direction` is a short label for the kind of \
change ("learning rate", "loss", "post-processing", ...).

Rules:
- One idea per proposal, small enough that its effect can be read from one result. Do not repeat \
experiments that results.tsv or CURRENT_STATE.md already show, or that are listed as in flight, unless \
you say why the retry differs.
- Keep the config block at the top of train.py in its format: one UPPER_CASE constant per line, \
`NAME = <python literal>  # comment`.
- train.py must still run end to end, write its prediction files and print the final `---` block; \
do not change how it is scored.
- Work in few turns: edit, then call submit. Text outside tool calls is not read by anyone.

The human's standing instructions (program.md) follow; they take precedence over your own ideas. \
Whatever they say, you tune on the validation split only through the loop's feedback (the scores in \
results.tsv and CURRENT_STATE.md), and you never look for the labels of the blind holdout split."""

NUDGE = (
    "You stopped without calling submit. Make your change with edit_train and call submit now; "
    "the proposal fails if you stop again."
)
CUT_OFF_NUDGE = (
    "Your reply was cut off at the output-token limit before it made a tool call. Keep it short: "
    "make your change with edit_train and call submit now; the proposal fails if you stop again."
)
LAST_TURN = "This is your last turn: call submit now (an edit_train before it in the same turn is fine)."
ASK = "Propose one change now: edit train.py with edit_train, then call submit."

CRASH_TAIL_CHARS = 8_000  # of a crashed run's log tail; view_file reads more when the model needs it


def program_section(program_md: str) -> str:
    return "# program.md\n\n" + program_md


def system_prompt(program_md: str) -> str:
    """The instructions and program.md as one text, for backends with a single system prompt."""
    return INSTRUCTIONS + "\n\n" + program_section(program_md)


def first_message_sections(context: Context) -> list[str]:
    """This iteration's material, one section each: what the data is, the state, recent results, what is
    in flight, why the last proposal bounced or crashed, and train.py; then the request."""
    sections = []
    if context.task_card.strip():
        sections.append("# The task card (what the data is)\n\n" + context.task_card.strip())
    sections += [
        "# CURRENT_STATE.md\n\n" + (context.current_state_md.strip() or "(empty)"),
        "# Recent rows of results.tsv\n\n" + (context.recent_results.strip() or "(no runs yet)"),
    ]
    if context.in_flight:
        lines = "\n".join(f"- {line.strip()}" for line in context.in_flight)
        sections.append(
            "# In flight now (queued or training, not yet in results.tsv)\n\n" + lines + "\n\n"
            "Do not propose any of these again; choose something else."
        )
    if context.feedback:
        sections.append("# Your previous proposal was sent back\n\n" + context.feedback.strip())
    if context.last_log_tail:
        sections.append(
            "# The last run crashed; the end of its log\n\n```\n"
            + context.last_log_tail[-CRASH_TAIL_CHARS:]
            + "\n```\n"
            "Fix the cause, or abandon that idea and propose something else."
        )
    sections.append("# Current train.py\n\n```python\n" + context.train_py + "\n```")
    sections.append(ASK)
    return sections


def first_message(context: Context) -> str:
    """The first user message as one text, for backends that take a plain string."""
    return "\n\n".join(first_message_sections(context))
