"""The overnight research loop's CLI (thin: options in, research_loop out).

python agent_loop.py [run] [--tag nov23] [--agent anthropic|builtin|null] [--llm MODEL] [--max-runs N]
                     [--max-hours H] [--max-cost-usd D] [--timeout-min M] [--train-args "..."]
                     [--policy confirm|monotonic] [--seeds K] [--min-delta D] [--close-after N]
python agent_loop.py status [--tag TAG]
python agent_loop.py report [--tag TAG] [--format rich|md] [--plot progress.png]
python agent_loop.py export RUN [--tag TAG] [--out DIR] [--train-args "..."]
python agent_loop.py calibrate [--repeats N] [--tag TAG] [--train-args "..."] [--policy confirm|monotonic]
                               [--seeds K] [--timeout-min M]
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime
from enum import Enum
from pathlib import Path
from statistics import median
from typing import Annotated

import typer
from rich.console import Console

from research_loop import calibrate as calibration
from research_loop.acceptance import make_policy
from research_loop.agents import AgentError
from research_loop.loop import LoopConfig, LoopError, describe_status, run_loop

REPO = Path(__file__).resolve().parent

app = typer.Typer(add_completion=False, help="An unattended overnight research loop for BIO NER.")


class PolicyName(str, Enum):
    confirm = "confirm"
    monotonic = "monotonic"


class AgentKind(str, Enum):
    anthropic = "anthropic"
    builtin = "builtin"
    null = "null"


def default_tag() -> str:
    """Today's date as a tag, like nov23."""
    return datetime.now().strftime("%b%d").lower()


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# train.py options that override a config constant: the builtin agent leaves those constants alone.
OVERRIDING_OPTIONS = {"--epochs": "EPOCHS", "--model": "MODEL_NAME", "--seed": "SEED", "--lr": "LEARNING_RATE"}


def make_agent(kind: AgentKind, llm: str | None, agent_seed: int, train_args: str):
    """The agent for --agent; the anthropic one is imported only when asked for."""
    if kind is AgentKind.anthropic:
        try:
            from research_loop import anthropic_agent
        except ImportError as exc:
            fail(f"the anthropic agent is not available ({exc})")
        model = llm or getattr(anthropic_agent, "DEFAULT_MODEL", None)
        if model not in anthropic_agent.MODEL_PRICES:
            fail(f"--llm {model}: not an allowed model; choose one of {', '.join(anthropic_agent.MODEL_PRICES)}")
        try:
            anthropic_agent.check_api_key()
            return anthropic_agent.AnthropicAgent(model=model, repo=REPO)
        except AgentError as exc:
            fail(str(exc))
    if llm:
        fail(f"--llm is for --agent anthropic, not --agent {kind.value}")
    from research_loop.builtin_agent import BuiltinAgent, NullAgent

    if kind is AgentKind.null:
        return NullAgent()
    import prepare

    try:
        labels, entity_types = prepare.load_labels(), prepare.load_entity_types()
    except prepare.DataError as exc:
        fail(str(exc))
    given = {arg.split("=")[0] for arg in shlex.split(train_args)}
    fixed = frozenset(name for option, name in OVERRIDING_OPTIONS.items() if option in given)
    return BuiltinAgent(REPO, labels, entity_types, seed=agent_seed, fixed=fixed)


@app.command()
def run(
    tag: Annotated[str | None, typer.Option(help="works on branch autoresearch/<tag>; default: today, like "
                                                 "nov23; an existing tag resumes")] = None,
    agent: Annotated[AgentKind, typer.Option(help="who proposes changes to train.py")] = AgentKind.anthropic,
    llm: Annotated[str | None, typer.Option(help="the model for --agent anthropic (from an allowlist)")] = None,
    max_runs: Annotated[int | None, typer.Option(min=1, help="stop after this many runs this session "
                                                             "(every results row counts)")] = None,
    max_hours: Annotated[float | None, typer.Option(min=0, help="start no run after this many hours")] = None,
    max_cost_usd: Annotated[float | None, typer.Option(min=0, help="stop once the agent cost this much")] = None,
    timeout_min: Annotated[float | None, typer.Option(min=0.01, help="kill a train.py run after this many "
                                                      "minutes; default: 3x the baseline's, at least 10")] = None,
    train_args: Annotated[str, typer.Option(help='extra arguments for every train.py run, '
                                                 'e.g. "--model minilm --epochs 2"')] = "",
    agent_seed: Annotated[int, typer.Option(help="seed of the builtin agent's random search")] = 0,
    policy: Annotated[PolicyName, typer.Option(help="confirm: screen on one seed, keep only a mean gain over "
                                                    "--seeds seeds beyond the seed noise; monotonic: keep any "
                                                    "one-seed gain")] = PolicyName.confirm,
    seeds: Annotated[int, typer.Option(min=2, help="seeds per confirmed run and for the baseline (confirm)")] = 3,
    min_delta: Annotated[float, typer.Option(min=0, help="never keep a mean gain below this (confirm)")] = 0.0,
    close_after: Annotated[int, typer.Option(min=0, help="close a direction after this many failures in a row; "
                                                         "0 = never")] = 5,
) -> None:
    """Start (or resume) the loop; Ctrl-C or a STOP file finishes the current run and stops."""
    try:
        shlex.split(train_args)
    except ValueError as exc:
        fail(f"--train-args: {exc}")
    config = LoopConfig(
        repo=REPO, tag=tag or default_tag(), train_args=train_args, max_runs=max_runs, max_hours=max_hours,
        max_cost_usd=max_cost_usd, timeout_s=timeout_min * 60 if timeout_min else None,
        check_duplicates=agent is not AgentKind.null,  # null proposals are duplicates on purpose
        close_after=0 if agent is AgentKind.null else close_after,  # and all in one direction
        policy=make_policy(policy.value, seeds=seeds, min_delta=min_delta),
    )
    proposer = make_agent(agent, llm, agent_seed, train_args)
    try:
        summary = run_loop(config, proposer)
    except LoopError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # before the loop's own Ctrl-C handling was in place: nothing had started
        typer.echo("interrupted before the first run", err=True)
        raise typer.Exit(130) from None
    best = (f"best run {summary.best_run}: strict F1 {summary.best_strict_f1:.4f} (commit {summary.best_commit[:10]})"
            if summary.best_strict_f1 is not None else "no scored run yet")
    overhead = f"; loop overhead {median(summary.overheads_s):.2f} s/run (median)" if summary.overheads_s else ""
    typer.echo(f"{'stopped' if summary.ok else 'error'}: {summary.stop_reason}")
    typer.echo(f"{summary.runs} runs this session ({summary.keeps} kept, {summary.crashes} crashed); {best}; "
               f"{summary.hours:.2f} h, ${summary.cost_usd:.2f}{overhead}")
    raise typer.Exit(0 if summary.ok else 1)


@app.command()
def status(
    tag: Annotated[str | None, typer.Option(help="default: the running loop's, or the checked-out branch's")] = None,
) -> None:
    """Say whether a loop is running and where its runs stand."""
    for line in describe_status(REPO, tag):
        typer.echo(line)


@app.command()
def calibrate(
    repeats: Annotated[int, typer.Option(min=2, help="seeds to run (42, 43, ... like the loop's)")] = 3,
    tag: Annotated[str | None, typer.Option(help="stored as runs/<tag>/calibration.json; default: today, "
                                                 "like nov23")] = None,
    train_args: Annotated[str, typer.Option(help='extra arguments for every train.py run, '
                                                 'e.g. "--model minilm --epochs 2"')] = "",
    policy: Annotated[PolicyName, typer.Option(help="the acceptance policy to judge the noise for")] = PolicyName.confirm,
    seeds: Annotated[int, typer.Option(min=1, help="seeds per confirmed run, for --policy confirm")] = 3,
    timeout_min: Annotated[float | None, typer.Option(min=0.01, help="kill a train.py run after this many "
                                                      "minutes; default: 120")] = None,
) -> None:
    """Run the committed train.py on a few seeds: seed noise of strict F1 on val, and the gain the policy can see."""
    try:
        shlex.split(train_args)
    except ValueError as exc:
        fail(f"--train-args: {exc}")
    try:
        acceptance = make_policy(policy.value, seeds=seeds)
    except ValueError as exc:
        fail(str(exc))
    tag = tag or default_tag()
    try:
        result = calibration.calibrate(REPO, tag, repeats, train_args, acceptance,
                                       timeout_min * 60 if timeout_min else None, echo=typer.echo)
    except calibration.CalibrationError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted: train.py was stopped; nothing written", err=True)
        raise typer.Exit(130) from None
    console = Console(highlight=False)
    console.print(calibration.calibration_table(result))
    for line in calibration.summary_lines(result):
        console.print(line)
    typer.echo(f"written: {calibration.calibration_path(REPO, tag).relative_to(REPO)}")


class ReportFormat(str, Enum):
    rich = "rich"
    md = "md"


@app.command()
def report(
    tag: Annotated[str | None, typer.Option(help="default: the tag of the current results.tsv")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", help="rich for the terminal, md for notes")] = (
        ReportFormat.rich),
    plot: Annotated[Path | None, typer.Option(help="where to write the progress plot; default: progress.png "
                                                   "in the repository")] = None,
) -> None:
    """The morning summary: what ran, what won, val against the blind holdout, warnings; writes progress.png."""
    import prepare
    from research_loop import morning
    from research_loop import report as reporting

    try:
        night = morning.load_night(REPO, tag, prepare)
        summary = reporting.build_report(night.rows, night.holdout, stop_reason=night.stop_reason,
                                         closed_directions=night.closed_directions, tokens=night.tokens)
    except reporting.ReportError as exc:
        fail(str(exc))
    written = reporting.plot_progress(night.rows, night.holdout, plot or REPO / "progress.png")
    if format is ReportFormat.md:
        typer.echo(reporting.render_markdown(summary))
    else:
        Console().print(reporting.render_rich(summary))
    typer.echo(f"plot: {written}", err=format is ReportFormat.md)


@app.command()
def export(
    run: Annotated[int, typer.Argument(help="the run number (results.tsv's run column)")],
    tag: Annotated[str | None, typer.Option(help="default: the checked-out branch's, else results.tsv's")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder; default: exports/<tag>-runNNNN/")] = None,
    train_args: Annotated[str | None, typer.Option(help="for a retrain only; default: the night's recorded "
                                                        "ones, else none")] = None,
) -> None:
    """Write a run's train.py and an official submission CSV for data/test.jsonl (training it again if needed)."""
    from research_loop.export import ExportError, current_tag, export_run

    tag = tag or current_tag(REPO)
    if tag is None:
        fail("no --tag given, and neither the checked-out branch nor results.tsv names one")
    try:
        result = export_run(REPO, tag, run, out_dir=out, train_args=train_args, progress=typer.echo)
    except ExportError as exc:
        fail(str(exc))
    for line in result.lines():
        typer.echo(line)


def main() -> None:
    """`python agent_loop.py [options]` means `python agent_loop.py run [options]`."""
    args = sys.argv[1:]
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    if not args or (args[0] not in commands and args[0] not in ("--help", "-h")):
        args = ["run", *args]
    app(args=args, prog_name="agent_loop.py")


if __name__ == "__main__":
    main()
