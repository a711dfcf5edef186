"""The overnight research loop's command line (thin: options in, research_loop out).

python agent_loop.py [run] [options]     start a night, or resume the unfinished one (run is the default)
python agent_loop.py status              is a loop running, which run and seed, for how long
python agent_loop.py calibrate           the seed noise of the committed train.py
python agent_loop.py report              the morning report and progress.png
python agent_loop.py export RUN          a run's train.py and an official submission CSV
python agent_loop.py consensus RUN       an LLM-consensus pass over a run's predicted spans
"""

from __future__ import annotations

from research_loop.night.stopping import catch_early_interrupts

catch_early_interrupts()  # first: a Ctrl-C during start-up stops the night cleanly, it does not kill it

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from research_loop.agents.registry import BACKENDS
from research_loop.cli import commands as support
from research_loop.evaluation.acceptance import POLICIES
from research_loop.execution.sandbox import SANDBOXES

REPO = Path(__file__).resolve().parent
HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(add_completion=False, context_settings=HELP, rich_markup_mode=None,
                  help="An unattended overnight research loop for BIO NER. `run` is the default command: "
                       "`python agent_loop.py -h` shows its options; `python agent_loop.py COMMAND -h` the others'.")


# The choices come from the registries: a new agent, policy or sandbox backend needs no line here.
AgentKind = Enum("AgentKind", {name.replace("-", "_"): name for name in BACKENDS}, type=str)
PolicyName = Enum("PolicyName", {name: name for name in POLICIES}, type=str)


class EvalMode(str, Enum):
    val = "val"
    cv = "cv"


SandboxKind = Enum("SandboxKind", {name: name for name in ("auto", *SANDBOXES)}, type=str)


@app.command()
def run(
    tag: Annotated[str | None, typer.Option(help="the night (branch autoresearch/<tag>); default: resume the latest "
                                                 "unfinished night, else start one named after today")] = None,
    new: Annotated[bool, typer.Option("--new", help="start a new night even if the last one did not finish")] = False,
    agent: Annotated[AgentKind, typer.Option(help="who proposes changes to train.py")] = AgentKind.anthropic,
    llm: Annotated[str | None, typer.Option(help="the model, for --agent anthropic, openai or claude-code")] = None,
    base_url: Annotated[str | None, typer.Option(help="an OpenAI-compatible server for --agent openai, e.g. "
                                                      "http://localhost:8000/v1 (default: OPENAI_BASE_URL)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="NAME=VALUE written into train.py's config block "
                                                                 "for a new night (repeatable)")] = None,
    max_runs: Annotated[int | None, typer.Option(min=1, help="stop after this many rows this session")] = None,
    max_hours: Annotated[float | None, typer.Option(min=0, help="start no run after this many hours")] = None,
    max_cost_usd: Annotated[float | None, typer.Option(min=0, help="stop once the agent cost this much")] = None,
    timeout_min: Annotated[float | None, typer.Option(min=0.01, help="kill a train.py run after this many "
                                                      "minutes; default: 3x the baseline's, at least 10")] = None,
    run_budget_min: Annotated[float | None, typer.Option(min=0.1, help="every run gets this wall-clock budget; "
                                                         "train.py receives the deadline")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="train on the first N training rows only")] = None,
    device: Annotated[str | None, typer.Option(help="train.py's --device (default: cuda when available)")] = None,
    eval_mode: Annotated[EvalMode | None, typer.Option("--eval", help="val: score val; cv: cross-validate over train "
                                                                 "and val (default val)")] = None,
    folds: Annotated[int | None, typer.Option(min=2, help="folds for --eval cv (default 5)")] = None,
    policy: Annotated[PolicyName | None, typer.Option(help="confirm (default): screen on one seed/fold, keep only "
                                                           "a paired gain beyond the noise; monotonic: keep any "
                                                           "one-seed gain")] = None,
    seeds: Annotated[int | None, typer.Option(min=2, help="seeds per confirmed run on val (default 3)")] = None,
    min_delta: Annotated[float, typer.Option(min=0, help="never keep a gain below this")] = 0.0,
    close_after: Annotated[int, typer.Option(min=0, help="close a direction after this many failures in a row; "
                                                         "0 = never")] = 5,
    agent_seed: Annotated[int, typer.Option(help="seed of the builtin and optuna searches")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="train.py runs at once, one GPU each (more than 1 needs "
                                                     "the ray extra)")] = 1,
    lookahead: Annotated[int, typer.Option(min=0, help="proposals the agent prepares ahead of the free "
                                                       "workers")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster instead of starting a local "
                                                         "one")] = None,
    sandbox: Annotated[SandboxKind, typer.Option(help="how train.py is isolated (auto: bwrap, else "
                                                      "unshare)")] = SandboxKind.auto,
    no_sandbox: Annotated[bool, typer.Option("--no-sandbox", help="allow running train.py UNSANDBOXED when no "
                                                                  "sandbox works (not advised with an LLM)")] = False,
    mlflow_uri: Annotated[str | None, typer.Option(help="track runs in MLflow at this URI ('default': "
                                                        "./mlruns); also --mlflow [URI]")] = None,
    source: Annotated[str | None, typer.Option(help="when data/ is not prepared yet: prepare it from this local "
                                                    "folder (prepare.py --source) instead of downloading")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="a new night's base commit or branch (default: "
                                                             "HEAD, or the night branch's own base)")] = None,
    agent_patience: Annotated[float, typer.Option(min=0.1, help="minutes an unreachable agent is retried "
                                                              "before the night stops")] = 30.0,
) -> None:
    """Start a night, or resume the unfinished one; Ctrl-C (or `touch STOP`) finishes the runs in flight."""
    options = support.RunOptions(
        tag=tag, new=new, agent=agent.value, llm=llm, base_url=base_url, settings=set_ or [], max_runs=max_runs,
        max_hours=max_hours, max_cost_usd=max_cost_usd, timeout_min=timeout_min, run_budget_min=run_budget_min,
        limit=limit, device=device, eval_mode=eval_mode.value if eval_mode else None, folds=folds,
        policy=policy.value if policy else None, seeds=seeds, min_delta=min_delta, close_after=close_after,
        agent_seed=agent_seed, workers=workers, lookahead=lookahead, ray_address=ray_address, sandbox=sandbox.value,
        no_sandbox=no_sandbox, mlflow_uri=mlflow_uri, source=source, from_ref=from_, agent_patience_min=agent_patience)
    raise typer.Exit(support.run_night(REPO, options, typer.echo))


@app.command()
def status(tag: Annotated[str | None, typer.Option(help="default: the running or latest night")] = None) -> None:
    """Say whether a loop is running, which runs it is training and for how long, and where the night stands."""
    for line in support.status_lines(REPO, tag):
        typer.echo(line)


@app.command()
def calibrate(
    repeats: Annotated[int, typer.Option(min=2, help="seeds to run (42, 43, ... like the loop's)")] = 3,
    tag: Annotated[str | None, typer.Option(help="stored as runs/<tag>/calibration.json; default: the night "
                                                 "`run` would use")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="train on the first N training rows only")] = None,
    timeout_min: Annotated[float | None, typer.Option(min=0.01, help="kill a run after this many minutes")] = None,
    seeds: Annotated[int, typer.Option(min=2, help="seeds per confirmed run, to judge the noise for")] = 3,
    sandbox: Annotated[SandboxKind, typer.Option(help="as for run")] = SandboxKind.auto,
    no_sandbox: Annotated[bool, typer.Option("--no-sandbox", help="as for run")] = False,
) -> None:
    """Run the committed train.py on a few seeds: the seed noise of strict F1 on val, and the gain the
    confirm policy can see with it."""
    raise typer.Exit(support.calibrate(REPO, repeats, tag, limit, timeout_min, seeds, sandbox.value, no_sandbox,
                                       typer.echo))


class ReportFormat(str, Enum):
    rich = "rich"
    md = "md"


@app.command()
def report(
    tag: Annotated[str | None, typer.Option(help="default: the latest night")] = None,
    format: Annotated[ReportFormat, typer.Option("--format", help="rich for the terminal, md for notes")] = (
        ReportFormat.rich),
    plot: Annotated[Path | None, typer.Option(help="the progress plot; default: progress.png here")] = None,
) -> None:
    """The morning report: what ran, what won, how far to trust it (val, folds, blind holdout), warnings."""
    raise typer.Exit(support.report(REPO, tag, format.value, plot, typer.echo))


@app.command()
def export(
    run: Annotated[int, typer.Argument(help="the run number (results.tsv's run column)")],
    tag: Annotated[str | None, typer.Option(help="default: the latest night")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder; default: exports/<tag>-runNNNN/")] = None,
    sandbox: Annotated[SandboxKind, typer.Option(help="as for run, when it has to train again")] = SandboxKind.auto,
    no_sandbox: Annotated[bool, typer.Option("--no-sandbox", help="as for run")] = False,
) -> None:
    """Write a run's train.py and an official submission CSV for the test rows (training it again if needed)."""
    raise typer.Exit(support.export(REPO, run, tag, out, sandbox.value, no_sandbox, typer.echo))


@app.command()
def consensus(
    run: Annotated[int, typer.Argument(help="the run whose predicted spans the models vote on")],
    llm: Annotated[list[str], typer.Option(help="a voting model, as BACKEND:MODEL (anthropic:claude-sonnet-5-5, "
                                                "openai:gpt-5.4-mini); repeatable")],
    tag: Annotated[str | None, typer.Option(help="default: the latest night")] = None,
    base_url: Annotated[str | None, typer.Option(help="the OpenAI-compatible server of openai: models")] = None,
    min_votes: Annotated[int | None, typer.Option(min=1, help="keep a span with this many keep votes "
                                                              "(default: a majority)")] = None,
    max_cost_usd: Annotated[float, typer.Option(min=0, help="stop asking once this was spent")] = 5.0,
) -> None:
    """Ask several LLMs to keep, drop or re-bound each predicted span; score the result on val and holdout."""
    raise typer.Exit(support.consensus(REPO, run, llm, tag, base_url, min_votes, max_cost_usd, typer.echo))


def main() -> None:
    """`python agent_loop.py [options]` means `python agent_loop.py run [options]`."""
    args = support.expand_optional_values(sys.argv[1:], "--mlflow", "--mlflow-uri", "default")
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    if not args or args[0] not in commands:
        if args[:1] in (["-h"], ["--help"]):
            typer.echo("Commands: run (the default), " + ", ".join(sorted(commands - {"run"})) +
                       "; `python agent_loop.py COMMAND -h` for each.\n")
        args = ["run", *args]
    app(args=args, prog_name="agent_loop.py")


if __name__ == "__main__":
    main()
