"""Optional MLflow tracking (`--mlflow [URI]`): the night is a parent run, each results.tsv row a nested run.

results.tsv stays the record; MLflow is a view of it for `mlflow ui`. Tracking never ends a night: every
MLflow failure is caught, reported once through `warn` (one line), and the next call tries again. mlflow is
imported only when tracking is on, so the project runs without it.

The default store is SQLite in the repository (`mlruns/mlflow.db`, artifacts under `mlruns/artifacts/`), not
the `mlruns/` file store: MLflow 3 refuses to open a file store unless MLFLOW_ALLOW_FILE_STORE=true, for
logging and for `mlflow ui` alike. A `file:` URI given on purpose still works (that variable is set for it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from research_loop.records.run_record import RunRecord, Status
from research_loop.redact import redact
from research_loop.safe_io import open_no_follow, read_text, write_atomically

EXPERIMENT_PREFIX = "ner-autoresearch"  # the experiment is "ner-autoresearch/<repository folder name>"
INSTALL_HINT = 'pip install -e ".[mlflow]"'
TRIAL_METRIC = "strict_f1_trial"  # strict F1 of each seed/fold, step = trial index
BEST_METRIC = "best_strict_f1"  # on the night's run: the running best, step = run number
LOG_LIMIT = 8 * 1024 * 1024  # bytes of each log kept as an artifact (its end)
# MLflow's limits (mlflow.utils.validation), here so that a long value is cut rather than refused.
MAX_KEY_LENGTH, MAX_PARAM_LENGTH, MAX_TAG_LENGTH, MAX_PER_BATCH = 250, 6000, 8000, 100
# How a row's status shows in the MLflow UI's status column.
RUN_STATE = {Status.CRASH: "FAILED", Status.TIMEOUT: "KILLED"}  # everything else FINISHED
LOGGED_TAG = "logged"  # set last on a nested run: without it the run was cut short and is logged again
# MLflow's own retry policy, shortened: its default (7 retries, backoff factor 2, 120 s timeout) spends about
# four minutes on each call to a server that is down, and the night would pay that for every row.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class Tracker(Protocol):
    """Where the loop reports a night: its start, every results.tsv row, its end."""

    def night_started(self, tag: str, settings: dict[str, object]) -> None: ...

    def run_logged(self, record: RunRecord, config: dict[str, object], train_py: str, diff: str,
                   log_files: list[Path]) -> None: ...

    def night_ended(self, stop_reason: str, ok: bool = True) -> None: ...


class NullTracker:
    """Tracking off: every call does nothing."""

    def night_started(self, tag: str, settings: dict[str, object]) -> None:
        pass

    def run_logged(self, record: RunRecord, config: dict[str, object], train_py: str, diff: str,
                   log_files: list[Path]) -> None:
        pass

    def night_ended(self, stop_reason: str, ok: bool = True) -> None:
        pass


def make_tracker(uri: str | None, enabled: bool, repo: Path, state_file: Path,
                 warn: Callable[[str], None]) -> Tracker:
    """NullTracker unless enabled; ImportError (one line, with the install command) when mlflow is missing."""
    if not enabled:
        return NullTracker()
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        why = "mlflow is not installed" if exc.name == "mlflow" else f"mlflow cannot be imported ({exc})"
        raise ImportError(f"--mlflow: {why}; {INSTALL_HINT}") from None
    return MlflowTracker(uri, repo, state_file, warn)


def experiment_name(repo: Path) -> str:
    return f"{EXPERIMENT_PREFIX}/{Path(repo).resolve().name}"


class MlflowTracker:
    """A night in an MLflow store; the parent run's id is kept in state_file, so a resumed night reuses it."""

    def __init__(self, uri: str | None, repo: Path, state_file: Path, warn: Callable[[str], None]):
        from mlflow.utils.file_utils import path_to_local_sqlite_uri

        self.repo = Path(repo).resolve()
        self.uri = uri or path_to_local_sqlite_uri(str(self.repo / "mlruns" / "mlflow.db"))
        # Only the default store gets a fixed artifact folder; a given URI keeps its server's own.
        self.artifact_location = (self.repo / "mlruns" / "artifacts").as_uri() if uri is None else None
        scheme = urlparse(self.uri).scheme
        if scheme in ("", "file"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name: let MLflow open it
        if scheme in ("http", "https"):
            for name, value in HTTP_LIMITS.items():  # a value the user set wins
                os.environ.setdefault(name, value)
        self.experiment_name = experiment_name(self.repo)
        self.state_file = Path(state_file)
        self.warn = warn
        self._client = None
        self._tag: str | None = None
        self._settings: dict[str, object] = {}
        self._parent_id: str | None = None
        self._experiment_id: str | None = None
        self._failing = False  # the last call failed (and was reported): stay quiet until one succeeds

    @property
    def ui_command(self) -> str:
        """What to run (or open) to see the night."""
        if urlparse(self.uri).scheme in ("http", "https", "databricks"):
            return self.uri
        return f"mlflow ui --backend-store-uri {shlex.quote(self.uri)}"

    # ----- the loop's calls -----

    def night_started(self, tag: str, settings: dict[str, object]) -> None:
        self._tag, self._settings, self._parent_id = tag, dict(settings), None
        self._guarded("start the night's run", self._parent)

    def run_logged(self, record: RunRecord, config: dict[str, object], train_py: str, diff: str,
                   log_files: list[Path]) -> None:
        self._guarded(f"log run {record.run}",
                      lambda: self._log_run(record, config, train_py, diff, log_files))

    def night_ended(self, stop_reason: str, ok: bool = True) -> None:
        self._guarded("end the night's run", lambda: self._end(stop_reason, ok))

    def _guarded(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        # MLflow, SQLAlchemy, HTTP, disk: none of it may end the night
        except Exception as exc:  # noqa: BLE001
            if not self._failing:
                self.warn(f"mlflow: could not {what} ({_one_line(exc)}); the night goes on, "
                          f"tracking tries again at the next call")
            self._failing = True
        else:
            self._failing = False

    # ----- the night's run -----

    def _client_(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _parent(self) -> str:
        """The night's run id: the one in state_file when it is still in this store, else a new one."""
        if self._parent_id is not None:
            return self._parent_id
        if self._tag is None:
            raise RuntimeError("night_started was not called")
        client = self._client_()
        run = self._stored_parent()
        if run is not None:
            client.update_run(run.info.run_id, status="RUNNING")
            resumes = int(run.data.tags.get("resumes", "0") or 0) + 1
            self._log_settings(run.info.run_id, run.data.params, {"resumes": str(resumes)})
        else:
            run = client.create_run(self._experiment(), run_name=self._tag, tags={"night": self._tag})
            # Saved before anything else is logged: a failure from here on still resumes this run.
            state = {"tracking_uri": self.uri, "experiment_id": run.info.experiment_id,
                     "run_id": run.info.run_id}
            write_atomically(self.state_file, json.dumps(state, indent=2) + "\n")
            self._log_settings(run.info.run_id, {}, {})
        self._parent_id, self._experiment_id = run.info.run_id, run.info.experiment_id
        return self._parent_id

    def _stored_parent(self):
        from mlflow.exceptions import MlflowException

        try:
            state = json.loads(read_text(self.state_file, default="") or "{}")
        except (json.JSONDecodeError, OSError):
            return None
        if not isinstance(state, dict) or state.get("tracking_uri") != self.uri or not state.get("run_id"):
            return None
        try:
            run = self._client_().get_run(str(state["run_id"]))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if run.info.lifecycle_stage == "deleted" or run.data.tags.get("night") != self._tag:
            return None
        return run

    def _experiment(self) -> str:
        client = self._client_()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _log_settings(self, run_id: str, logged: dict[str, str], tags: dict[str, str]) -> None:
        """Settings as params; params are write-once, so a resumed night's changed values become tags."""
        params = {_key(name): _text(value, MAX_PARAM_LENGTH) for name, value in _flatten(self._settings)}
        new = {name: value for name, value in params.items() if name not in logged}
        changed = {f"setting.{name}": value for name, value in params.items()
                   if name in logged and logged[name] != value}
        self._log_batch(run_id, params=new, tags={**changed, **tags})

    def _end(self, stop_reason: str, ok: bool) -> None:
        if self._tag is None:
            return
        parent = self._parent()
        self._client_().set_tag(parent, "stop_reason", _text(stop_reason, MAX_TAG_LENGTH))
        self._client_().set_terminated(parent, "FINISHED" if ok else "KILLED")

    # ----- one row -----

    def _log_run(self, record: RunRecord, config: dict[str, object], train_py: str, diff: str,
                 log_files: list[Path]) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        client, parent = self._client_(), self._parent()
        # The same row offered again (a resumed night, a retry) is logged once; a half-logged one is redone.
        same_row = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' and tags.run = '{record.run}'"
        for earlier in client.search_runs([self._experiment_id], same_row):
            if earlier.data.tags.get(LOGGED_TAG) == "true":
                return
            client.delete_run(earlier.info.run_id)
        run_id = client.create_run(self._experiment_id, run_name=f"run {record.run} {record.status}",
                                   tags={MLFLOW_PARENT_RUN_ID: parent, **_row_tags(record)}).info.run_id
        try:
            params = {_key(name): _text(value, MAX_PARAM_LENGTH) for name, value in config.items()}
            self._log_batch(run_id, params=params, metrics=list(_row_metrics(record)))
            if diff:
                client.log_text(run_id, redact(diff), "change.diff")
            if train_py:
                client.log_text(run_id, redact(train_py), "train.py")
            for name, text in _log_artifacts(log_files):
                client.log_text(run_id, redact(text), name)
            if record.status.kept and record.strict_f1 is not None:
                client.log_metric(parent, BEST_METRIC, record.strict_f1, step=record.run)
            client.set_tag(run_id, LOGGED_TAG, "true")
        except Exception:
            with contextlib.suppress(Exception):  # the first error is the one worth reporting
                client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, RUN_STATE.get(record.status, "FINISHED"))

    def _log_batch(self, run_id: str, params: dict[str, str] | None = None,
                   metrics: list[tuple[str, float, int]] | None = None,
                   tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        entities = ([Param(name, value) for name, value in (params or {}).items()]
                    + [RunTag(name, value) for name, value in (tags or {}).items()])
        metric_entities = [Metric(name, value, now, step) for name, value, step in metrics or []]
        for start in range(0, max(len(entities), len(metric_entities)), MAX_PER_BATCH):
            chunk = entities[start:start + MAX_PER_BATCH]
            self._client_().log_batch(run_id, metrics=metric_entities[start:start + MAX_PER_BATCH],
                                      params=[item for item in chunk if isinstance(item, Param)],
                                      tags=[item for item in chunk if isinstance(item, RunTag)])


def _row_tags(record: RunRecord) -> dict[str, str]:
    tags = {"status": record.status.value, "kept": "true" if record.status.kept else "false",
            "run": str(record.run), "night": record.tag, "direction": record.direction,
            "commit": record.commit}
    optional = {"mlflow.source.git.commit": record.commit, "parent_commit": record.parent,
                "description": redact(record.description), "note": redact(record.note),
                "seeds": ",".join(map(str, record.seeds)), "folds": ",".join(map(str, record.folds)),
                "device": record.device, "sandbox": record.sandbox, "workers": ",".join(record.workers),
                "mlflow.note.content": redact("\n\n".join(filter(None, (record.description, record.note))))}
    tags.update({name: value for name, value in optional.items() if value})
    return {name: _text(value, MAX_TAG_LENGTH) for name, value in tags.items()}


def _row_metrics(record: RunRecord) -> Iterator[tuple[str, float, int]]:
    """(name, value, step) of a row: none for an invalid one; scores only for a scored one."""
    if not record.status.ran:
        return
    known = {"seconds": record.seconds, "epochs": record.epochs, "cost_usd": record.cost_usd,
             "peak_vram_gb": record.peak_vram_gb}
    if record.status.scored and record.strict_f1 is not None:
        known.update({"strict_f1": record.strict_f1, "relaxed_f1": record.relaxed_f1,
                      "strict_f1_sd": record.strict_f1_sd})
        known.update({_key(f"strict_f1_{name}"): value for name, value in record.per_type.items()})
        for step, score in enumerate(record.seed_scores):
            if math.isfinite(score):
                yield TRIAL_METRIC, score, step
    for name, value in known.items():
        if value is not None and math.isfinite(value):
            yield name, float(value), 0


def _log_artifacts(log_files: list[Path]) -> Iterator[tuple[str, str]]:
    """(artifact path, text) of each log that exists, under logs/ with its folder below the logs' common one
    (run.log, seed-43/run.log). Read without following links and only its end: train.py wrote these files."""
    paths = [Path(os.path.abspath(path)) for path in log_files]
    if not paths:
        return
    base = Path(os.path.commonpath([path.parent for path in paths]))
    for path in paths:
        text = _read_end(path)
        if text:
            yield f"logs/{path.relative_to(base).as_posix()}", text


def _read_end(path: Path) -> str:
    try:
        fd = open_no_follow(path, single_link=True)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - LOG_LIMIT))
        text = file.read().decode("utf-8", errors="replace")
    return text if size <= LOG_LIMIT else f"[the first {size - LOG_LIMIT} bytes were left out]\n{text}"


def _flatten(values: dict[str, object], prefix: str = "") -> Iterator[tuple[str, object]]:
    """Nested settings as dotted names: {"set": {"LR": 1e-4}} -> ("set.LR", 1e-4)."""
    for name, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _key(name: object) -> str:
    """A name MLflow accepts for a param or metric (letters, digits, _ - . and spaces)."""
    return re.sub(r"[^\w.\- ]", "_", str(name)).strip(". ")[:MAX_KEY_LENGTH] or "_"


def _text(value: object, limit: int) -> str:
    return str(value)[:limit]


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    message = message if len(message) <= 200 else message[:197] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
