"""What each agent_loop.py command does, between its options and the package: option checks with one-line
errors, the night's settings on resume, the agent and tracker, and the lines printed at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from research_loop import config_block
from research_loop.evaluation.acceptance import make_policy
from research_loop.night import folders as workspace

Echo = Callable[..., None]


def fail(echo: Echo, message: str) -> int:
    echo(f"error: {message}", err=True)
    return 1


def expand_optional_values(args: list[str], flag: str, option: str, default: str) -> list[str]:
    """`--mlflow` alone -> `--mlflow-uri default`; `--mlflow URI` -> `--mlflow-uri URI` (typer has no
    options with an optional value)."""
    out, index = [], 0
    while index < len(args):
        if args[index] == flag:
            following = args[index + 1] if index + 1 < len(args) else None
            if following is not None and not following.startswith("-"):
                out += [option, following]
                index += 2
                continue
            out += [option, default]
        else:
            out.append(args[index])
        index += 1
    return out


@dataclass
class RunOptions:
    """The `run` command's options as the user gave them: minutes, NAME=VALUE strings, and None for "not
    given" (a resumed night must tell a given option from a default). The preflight reads them; build_config
    turns them, once, into the night's NightConfig, which is all the pipeline sees."""

    tag: str | None = None
    new: bool = False
    agent: str = "anthropic"
    llm: str | None = None
    base_url: str | None = None
    settings: list[str] = field(default_factory=list)
    max_runs: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None
    timeout_min: float | None = None
    run_budget_min: float | None = None
    limit: int | None = None
    device: str | None = None
    eval_mode: str | None = None
    folds: int | None = None
    policy: str | None = None
    seeds: int | None = None
    min_delta: float = 0.0
    close_after: int = 5
    agent_seed: int = 0
    workers: int = 1
    lookahead: int = 1
    ray_address: str | None = None
    sandbox: str = "auto"
    no_sandbox: bool = False
    mlflow_uri: str | None = None
    source: str | None = None  # prepare.py --source DIR, when data/ is not prepared yet
    from_ref: str | None = None  # a new night's base (default: HEAD, or a night branch's own base)
    agent_patience_min: float = 30.0


# What shapes a night: fixed when it starts, kept when it resumes (option name -> night.json key, default).
NIGHT_SHAPE = {"eval_mode": ("eval", "val"), "folds": ("folds", 5), "policy": ("policy", "confirm"),
               "seeds": ("seed_count", 3), "run_budget_min": ("run_budget_min", None)}


class OptionError(Exception):
    pass


def night_shape(options: RunOptions, night: dict) -> dict:
    """The night's shaping options: given ones for a new night; the stored ones on resume (a different
    value given explicitly is an error: a night's runs must stay comparable)."""
    shape = {}
    for name, (key, default) in NIGHT_SHAPE.items():
        given = getattr(options, name)
        stored = night.get(key, default) if night else None
        if night and given is not None and given != stored:
            raise OptionError(f"night {night.get('tag')} was started with --{name.replace('_', '-')} {stored}; a "
                              "resumed night keeps its settings (start another with --new)")
        shape[name] = stored if night else (given if given is not None else default)
    if night and options.settings:
        given = [config_block.parse_assignment(text) for text in options.settings]
        # The same command as the night's first one resumes it; other values would make its runs incomparable.
        if {name: config_block.literal(value) for name, value in given} != night.get("settings", {}):
            raise OptionError(f"--set applies to a new night; night {night.get('tag')} keeps the config it "
                              "started with (its runs' train.py is the truth; start another with --new)")
    return shape


def build_config(repo: Path, options: RunOptions, tag: str, night: dict, echo: Echo):
    from research_loop.agents.registry import writes_code
    from research_loop.night.config import NightConfig

    shape = night_shape(options, night)
    settings = [config_block.parse_assignment(text) for text in options.settings]
    cv = shape["eval_mode"] == "cv"
    trials = shape["folds"] if cv else shape["seeds"]
    train_options = (*(["--limit", str(options.limit)] if options.limit else []),
                           *(["--device", options.device] if options.device else []))
    allow_unsandboxed = options.no_sandbox or not writes_code(options.agent)
    if options.sandbox == "none" and not allow_unsandboxed:
        raise OptionError(f"--sandbox none with --agent {options.agent} needs --no-sandbox: an LLM's train.py "
                          "would run with your keys, your network and your files")
    budget = shape["run_budget_min"]
    return NightConfig(
        repo=repo, tag=tag, agent=options.agent, settings=settings, train_options=train_options,
        max_runs=options.max_runs, max_hours=options.max_hours, max_cost_usd=options.max_cost_usd,
        timeout_s=options.timeout_min * 60 if options.timeout_min else None,
        run_budget_s=budget * 60 if budget else None,
        policy=make_policy(shape["policy"], trials=trials, min_delta=options.min_delta),
        eval_mode=shape["eval_mode"], folds=shape["folds"], seeds=tuple(range(42, 42 + shape["seeds"])),
        check_duplicates=options.agent != "null", close_after=0 if options.agent == "null" else options.close_after,
        workers=options.workers, lookahead=options.lookahead, ray_address=options.ray_address,
        sandbox=options.sandbox, allow_unsandboxed=allow_unsandboxed,
        agent_patience_s=options.agent_patience_min * 60, writes_code=writes_code(options.agent))


def night_base(repo: Path, night: dict, from_ref: str | None) -> tuple[str | None, str | None]:
    """(base commit, the branch checked out now) of a new night. A night never starts from another night's
    tip: on a night branch, the new night starts from that night's own base; --from REF picks another."""
    import git

    from research_loop.records.gitops import BRANCH_PREFIX

    try:
        repo_git = git.Repo(repo)
        branch = None if repo_git.head.is_detached else repo_git.active_branch.name
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, TypeError):
        return None, None
    if night:
        return None, night.get("from_branch")
    if from_ref:
        try:
            return repo_git.commit(from_ref).hexsha, branch
        except (git.BadName, ValueError):
            raise OptionError(f"--from {from_ref}: not a commit, branch or tag of this repository") from None
    if branch and branch.startswith(BRANCH_PREFIX):
        other = workspace.Workspace(repo, branch[len(BRANCH_PREFIX):]).night()
        base = other.get("base") or other.get("baseline_commit")
        if base and not other.get("base"):  # a night from before "base" was recorded: its --set commit's parent
            commit = repo_git.commit(base)
            if commit.message.startswith("baseline config:") and commit.parents:
                base = commit.parents[0].hexsha
        if base:
            return base, other.get("from_branch") or branch
    return repo_git.head.commit.hexsha, branch


def searched_data(repo: Path, agent: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(labels, entity types, auxiliary sets) of data/ for an agent that searches the config block; empty
    for the others."""
    import prepare
    from research_loop.agents.registry import BACKENDS

    if agent not in BACKENDS or not BACKENDS[agent].needs_labels:
        return (), (), ()
    try:
        data = repo / "data"
        return (tuple(prepare.load_labels(data)), tuple(prepare.load_entity_types(data)),
                tuple(prepare.aux_names(data)))
    except prepare.DataError as exc:
        raise OptionError(str(exc)) from None


def make_agent(repo: Path, options: RunOptions, tag: str, refused: list[dict] = ()):
    from research_loop.agents.registry import AgentOptions
    from research_loop.agents.registry import make_agent as build

    labels, types, aux = searched_data(repo, options.agent)
    return build(AgentOptions(options.agent, options.llm, options.base_url, options.agent_seed, labels, types, aux,
                              repo / "runs" / tag / "optuna.db", tuple(refused)), repo)


def night_files(repo: Path, config) -> tuple[str, dict[str, bytes], list[Path], Path]:
    """(the train.py a night starts from, before its --set values; the fixed files; the private folders; the
    jobs folder), for the checks that run before the night."""
    import git

    from research_loop.night.opening import private_folders
    from research_loop.records.integrity import FIXED_FILES

    commit = git.Repo(repo).commit(config.base or "HEAD")
    files = {name: (commit.tree / name).data_stream.read() for name in ("train.py", *FIXED_FILES)
             if name in commit.tree}
    private = private_folders(repo, workspace.read_json(repo / "data" / "manifest.json"))
    return files.pop("train.py").decode("utf-8"), files, private, workspace.Workspace(repo, config.tag).jobs_root


def check_new_settings(repo: Path, config, night: dict, backend: str) -> None:
    """A new night's --set values, checked by train.py --check in the sandbox before any branch or commit."""
    from research_loop.night.preflight import check_settings

    if night or not config.settings:
        return
    train_py, files, private, jobs_root = night_files(repo, config)
    check_settings(repo, train_py, files, config.settings, backend, jobs_root, private)


def refused_changes(repo: Path, options: RunOptions, config, night: dict, backend: str) -> list[dict]:
    """For a search agent (builtin, optuna): the changes of its space that train.py --check refuses."""
    from research_loop.agents import search_space
    from research_loop.night.preflight import check_search_space

    labels, types, aux = searched_data(repo, options.agent)
    if not labels:
        return []
    train_py, files, private, jobs_root = night_files(repo, config)
    settings = [config_block.parse_assignment(f"{name}={value}") for name, value in night.get("settings", {}).items()]
    train_py = config_block.apply_settings(train_py, settings if night else config.settings)
    space = search_space.options(list(labels), list(types), list(aux))
    return check_search_space(repo, train_py, files, space, backend, jobs_root, private)


def run_night(repo: Path, options: RunOptions, echo: Echo) -> int:
    """Every check before anything is created (another loop, the options, data/, the --set values, the
    agent), then the night, then where its best train.py is."""
    from research_loop.agents.registry import AgentSetupError
    from research_loop.loop import LoopError, overhead_text, run_loop
    from research_loop.night.preflight import (
        PreflightError,
        check_agent,
        choose_backend,
        ensure_data,
        refuse_if_held,
    )
    from research_loop.records.tracking import make_tracker

    try:
        refuse_if_held(repo)
        tag, how = workspace.resolve_tag(repo, options.tag, options.new)
        night = workspace.Workspace(repo, tag).night()
        config = build_config(repo, options, tag, night, echo)
        config.base, config.from_branch = night_base(repo, night, options.from_ref)
        ensure_data(repo, options.source, echo)
        backend = choose_backend(config.sandbox, config.allow_unsandboxed)  # before the agent is asked anything
        check_new_settings(repo, config, night, backend)
        agent = make_agent(repo, options, tag, refused_changes(repo, options, config, night, backend))
        check_agent(agent)
        if options.mlflow_uri is not None:
            uri = None if options.mlflow_uri == "default" else options.mlflow_uri
            config.tracker = make_tracker(uri, True, repo, repo / "runs" / tag / "mlflow.json",
                                          lambda line: echo(line, err=True))
    except (OptionError, AgentSetupError, PreflightError, workspace.WorkspaceError, config_block.ConfigBlockError,
            ValueError, ImportError) as exc:
        return fail(echo, str(exc))
    echo(how)
    try:
        summary = run_loop(config, agent)
    except LoopError as exc:
        return fail(echo, str(exc))
    except KeyboardInterrupt:
        echo("interrupted before the first run", err=True)
        return 130
    echo(f"{'stopped' if summary.ok else 'error'}: {summary.stop_reason}")
    if not summary.ok and summary.best_run is None and not night and summary.stop_reason.startswith("the baseline"):
        from research_loop.night.opening import discard_failed_night

        echo(discard_failed_night(workspace.Workspace(repo, tag), config.from_branch, config.base))
        return 1
    unit = "fold" if config.eval_mode == "cv" else "seed"
    best = (f"best run {summary.best_run}: strict F1 {summary.best_strict_f1:.4f} ({summary.best_trials} {unit}"
            f"{'s' if summary.best_trials != 1 else ''}; commit {summary.best_commit[:10]})"
            if summary.best_strict_f1 is not None else "no scored run yet")
    cost = f"${summary.cost_usd:.2f}" + (" + unpriced calls" if summary.cost_unknown else "")
    overhead = overhead_text(summary)
    echo(f"{summary.runs} runs this session ({summary.keeps} kept, {summary.crashes} crashed); {best}; "
         f"{summary.hours:.2f} h, {cost}" + (f"; {overhead}" if overhead else ""))
    if summary.sandbox == "none":
        echo("UNSANDBOXED: this night's train.py ran with your user's powers (no sandbox worked here)")
    if not summary.finished:
        waiting = f"; {summary.interrupted} proposal(s) waiting will run first" if summary.interrupted else ""
        echo(f"to resume this night: python agent_loop.py (it picks up night {tag}){waiting}")
    if summary.best_run is not None:
        back = workspace.Workspace(repo, tag).night().get("from_branch")
        echo(f"the best train.py is checked out, on branch autoresearch/{tag}"
             + (f"; `git checkout {back}` goes back to where you started" if back else ""))
    return 0 if summary.ok else 1


def status_lines(repo: Path, tag: str | None) -> list[str]:
    from research_loop.cli.status import describe_status

    return describe_status(repo, tag)


def prepared(repo: Path, echo: Echo) -> bool:
    """data/ prepared for calibrate, export and consensus as for a night (prepare.py runs when it is missing)."""
    from research_loop.night.preflight import PreflightError, ensure_data

    try:
        ensure_data(repo, None, echo)
    except PreflightError as exc:
        fail(echo, str(exc))
        return False
    return True


def calibrate(repo, repeats, tag, limit, timeout_min, seeds, sandbox, no_sandbox, echo) -> int:
    from research_loop.calibrate import CalibrationError, calibration_lines, run_calibration

    if not prepared(repo, echo):
        return 1
    tag = tag or workspace.resolve_tag(repo, None, False)[0]
    try:
        result = run_calibration(repo, tag, repeats, limit, timeout_min * 60 if timeout_min else None,
                                 make_policy("confirm", trials=seeds), sandbox, no_sandbox, echo)
    except CalibrationError as exc:
        return fail(echo, str(exc))
    except KeyboardInterrupt:
        echo("interrupted: train.py was stopped; nothing written", err=True)
        return 130
    for line in calibration_lines(result):
        echo(line)
    echo(f"written: {Path('runs') / tag / 'calibration.json'}")
    return 0


def report(repo, tag, format_name, plot, echo) -> int:
    from research_loop.report.data import ReportError, build_report
    from research_loop.report.plot import plot_progress
    from research_loop.report.render import render_markdown, render_rich

    try:
        report_data = build_report(repo, tag)
    except ReportError as exc:
        return fail(echo, str(exc))
    written = plot_progress(report_data, plot or repo / "progress.png")
    if format_name == "md":
        echo(render_markdown(report_data))
    else:
        from rich.console import Console

        Console().print(render_rich(report_data))
    echo(f"plot: {written}", err=format_name == "md")
    return 0


def export(repo, run, tag, out, sandbox, no_sandbox, echo) -> int:
    from research_loop.export import ExportError, export_run

    if not prepared(repo, echo):
        return 1
    tag = tag or workspace.latest_tag(repo)
    if tag is None:
        return fail(echo, "no night yet: nothing to export (start one with `python agent_loop.py`)")
    try:
        result = export_run(repo, tag, run, out_dir=out, sandbox=sandbox, allow_unsandboxed=no_sandbox, progress=echo)
    except ExportError as exc:
        return fail(echo, str(exc))
    except KeyboardInterrupt:
        echo("interrupted: the retrain was stopped; no submission written", err=True)
        return 130
    for line in result.lines():
        echo(line)
    return 0


def consensus(repo, run, llms, tag, base_url, min_votes, max_cost_usd, echo) -> int:
    from research_loop.consensus.run import ConsensusError, run_consensus

    if not prepared(repo, echo):
        return 1
    tag = tag or workspace.latest_tag(repo)
    if tag is None:
        return fail(echo, "no night yet: no run to vote on")
    try:
        result = run_consensus(repo, tag, run, llms, base_url=base_url, min_votes=min_votes,
                               max_cost_usd=max_cost_usd, echo=echo)
    except ConsensusError as exc:
        return fail(echo, str(exc))
    for line in result.lines():
        echo(line)
    return 0

