"""MLflow tracking: a night read back through MLflow's own client as `mlflow ui` shows it, a resumed night
reusing its parent run, a broken store that warns once and never raises, the hint when mlflow is missing."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from research_loop.records.run_record import RunRecord, Status
from research_loop.records.tracking import (
    HTTP_LIMITS,
    INSTALL_HINT,
    MlflowTracker,
    NullTracker,
    make_tracker,
)

mlflow = pytest.importorskip("mlflow")
MlflowClient = mlflow.MlflowClient
# MLflow's SQLite store uses a SQLAlchemy option that SQLAlchemy has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.store.tracking.sqlalchemy_store")

TAG = "nov23"
SETTINGS = {
    "agent": "builtin",
    "policy": "confirm",
    "eval": "val",
    "seeds": [42, 43, 44],
    "set": {"LR": 1e-4},
}
TRAIN_PY = "LR = 1e-4  # learning rate\nEPOCHS = 3  # passes over train\n"
KEY = "sk-ant-" + "x" * 30  # a key-shaped string that must not reach the store


def record(run, status, scores=(), **fields):
    item = RunRecord(
        run=run,
        tag=TAG,
        status=status,
        commit=f"c0ffee{run}",
        seeds=[42, 43, 44][: len(scores)],
        seconds=60.0 * max(len(scores), 1),
        epochs=3.0,
        cost_usd=0.01,
        direction="learning rate",
        description=f"change {run}",
        parent="c0ffee0",
        **fields,
    )
    if scores:
        per_type = {"ClinicalImpacts": [s + 0.1 for s in scores], "SocialImpacts": [s - 0.1 for s in scores]}
        item.set_scores(list(scores), [s + 0.05 for s in scores], per_type)
    return item


def logs(repo, run):
    folder = repo / "runs" / TAG / str(run)
    (folder / "seed-43").mkdir(parents=True)
    (folder / "run.log").write_text(f"epoch 1 loss 0.9\nkey {KEY}\n")
    (folder / "seed-43" / "run.log").write_text("epoch 1 loss 0.8\n")
    (repo / "holdout_gold.jsonl").write_text("secret gold\n")
    (folder / "seed-44").mkdir()
    (folder / "seed-44" / "run.log").symlink_to(repo / "holdout_gold.jsonl")  # planted by train.py: refused
    return [folder / "run.log", folder / "seed-43" / "run.log", folder / "seed-44" / "run.log"]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """One night in the default store (sqlite under <repo>/mlruns): killed after five rows, then resumed."""
    repo = tmp_path_factory.mktemp("night") / "myrepo"
    repo.mkdir()
    state_file = repo / "runs" / TAG / "mlflow.json"
    warnings = []
    tracker = MlflowTracker(None, repo, state_file, warnings.append)
    tracker.night_started(TAG, SETTINGS)
    rows = [
        record(0, Status.BASELINE, [0.30, 0.31, 0.32]),
        record(1, Status.KEEP, [0.33, 0.34, 0.35]),
        record(2, Status.DISCARD, [0.29]),
        record(3, Status.CRASH, note="CUDA out of memory"),
        record(4, Status.INVALID, note="did not compile: line 3"),
    ]
    config = {"LR": 1e-4, "EPOCHS": 3, "LABELS": ["B", "I", "O"], "NAME": None}
    tracker.run_logged(rows[0], config, TRAIN_PY, "", logs(repo, 0))
    for item in rows[1:]:
        tracker.run_logged(item, {**config, "LR": 2e-4}, TRAIN_PY, f"-LR = 1e-4\n+LR = 2e-4  # {KEY}\n", [])
    tracker.night_ended("aborted: Ctrl-C", ok=False)

    client = MlflowClient(tracker.uri)
    first_parent = client.get_run(tracker._parent_id)
    # kill -9 in the middle of logging run 5: a nested run without its `logged` tag is left behind
    client.create_run(
        first_parent.info.experiment_id, tags={"mlflow.parentRunId": first_parent.info.run_id, "run": "5"}
    )

    resumed = MlflowTracker(None, repo, state_file, warnings.append)  # a new process, the same tag
    resumed.night_started(TAG, {**SETTINGS, "policy": "monotonic"})
    resumed.run_logged(rows[2], config, TRAIN_PY, "", [])  # offered again: logged once
    resumed.run_logged(record(5, Status.KEEP, [0.36, 0.37, 0.38]), config, TRAIN_PY, "", [])
    resumed.night_ended("--max-runs reached", ok=True)
    return {
        "tracker": resumed,
        "client": client,
        "repo": repo,
        "warnings": warnings,
        "state_file": state_file,
        "killed_status": first_parent.info.status,
        "parent_id": first_parent.info.run_id,
    }


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """MLflow puts some things relative to the working directory: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def children(night):
    runs = night["client"].search_runs(
        [night["client"].get_run(night["parent_id"]).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{night['parent_id']}'",
    )
    return {int(run.data.tags["run"]): run for run in runs}


def test_the_night_is_one_parent_run_with_its_settings(night):
    client, parent_id = night["client"], night["parent_id"]
    assert night["warnings"] == []
    database = night["repo"] / "mlruns" / "mlflow.db"
    assert database.exists()
    assert night["tracker"].ui_command == f"mlflow ui --backend-store-uri sqlite:///{database}"
    experiment = client.get_experiment_by_name("ner-autoresearch/myrepo")
    assert experiment is not None
    assert experiment.artifact_location == (night["repo"] / "mlruns" / "artifacts").as_uri()
    parents = client.search_runs(
        [experiment.experiment_id], "tags.night = 'nov23' and attributes.run_name = 'nov23'"
    )
    assert [run.info.run_id for run in parents] == [parent_id]
    parent = parents[0]
    assert parent.data.params == {
        "agent": "builtin",
        "policy": "confirm",
        "eval": "val",
        "seeds": "[42, 43, 44]",
        "set.LR": "0.0001",
    }
    assert night["killed_status"] == "KILLED" and parent.info.status == "FINISHED"
    assert parent.data.tags["stop_reason"] == "--max-runs reached"
    history = client.get_metric_history(parent_id, "best_strict_f1")
    assert [(m.step, round(m.value, 2)) for m in history] == [(0, 0.31), (1, 0.34), (5, 0.37)]


def test_a_resumed_night_reuses_its_parent_and_logs_each_row_once(night):
    assert f'"run_id": "{night["parent_id"]}"' in night["state_file"].read_text()
    runs = children(night)
    assert sorted(runs) == [0, 1, 2, 3, 4, 5]  # run 2 offered twice, run 5's half-logged copy replaced
    assert runs[5].data.tags["logged"] == "true"
    parent = night["client"].get_run(night["parent_id"])
    assert parent.data.params["policy"] == "confirm"  # params are write-once: the changed value is a tag
    assert parent.data.tags["setting.policy"] == "monotonic" and parent.data.tags["resumes"] == "1"


def test_each_row_is_a_nested_run_with_params_metrics_and_tags(night):
    runs = children(night)
    keep = runs[1]
    assert keep.info.run_name == "run 1 keep" and keep.info.status == "FINISHED"
    assert keep.data.params == {"LR": "0.0002", "EPOCHS": "3", "LABELS": "['B', 'I', 'O']", "NAME": "None"}
    assert {name: round(value, 4) for name, value in keep.data.metrics.items()} == {
        "strict_f1": 0.34,
        "relaxed_f1": 0.39,
        "strict_f1_sd": 0.01,
        "strict_f1_ClinicalImpacts": 0.44,
        "strict_f1_SocialImpacts": 0.24,
        "strict_f1_trial": 0.35,
        "seconds": 180.0,
        "epochs": 3.0,
        "cost_usd": 0.01,
    }
    names = ("status", "kept", "direction", "commit", "run", "seeds")
    assert {name: keep.data.tags[name] for name in names} == {
        "status": "keep",
        "kept": "true",
        "direction": "learning rate",
        "commit": "c0ffee1",
        "run": "1",
        "seeds": "42,43,44",
    }
    assert keep.data.tags["mlflow.note.content"] == "change 1"
    assert [runs[n].data.tags["kept"] for n in range(6)] == [
        "true",
        "true",
        "false",
        "false",
        "false",
        "true",
    ]
    history = night["client"].get_metric_history(keep.info.run_id, "strict_f1_trial")
    assert [(m.step, m.value) for m in history] == [(0, 0.33), (1, 0.34), (2, 0.35)]
    history = night["client"].get_metric_history(runs[2].info.run_id, "strict_f1_trial")
    assert [(m.step, m.value) for m in history] == [(0, 0.29)]  # a discard after one seed


def test_crash_and_invalid_rows_are_logged_without_scores(night):
    runs = children(night)
    crash, invalid = runs[3], runs[4]
    assert crash.info.status == "FAILED" and crash.data.tags["note"] == "CUDA out of memory"
    assert set(crash.data.metrics) == {"seconds", "epochs", "cost_usd"}
    assert invalid.info.status == "FINISHED" and invalid.data.metrics == {}
    assert invalid.data.tags["status"] == "invalid" and invalid.data.tags["note"] == "did not compile: line 3"
    assert invalid.data.params["LR"] == "0.0002"


def test_artifacts_are_the_diff_train_py_and_logs_without_secrets(night, tmp_path):
    client, runs = night["client"], children(night)

    def artifacts(run):
        found, folders = [], [""]
        while folders:
            for item in client.list_artifacts(run.info.run_id, folders.pop() or None):
                (folders if item.is_dir else found).append(item.path)
        return sorted(found)

    baseline, keep = runs[0], runs[1]
    # the baseline has no diff; seed-44's log is a symlink to the holdout gold and is refused
    assert artifacts(baseline) == ["logs/run.log", "logs/seed-43/run.log", "train.py"]
    assert artifacts(keep) == ["change.diff", "train.py"]
    log = Path(client.download_artifacts(baseline.info.run_id, "logs/run.log", str(tmp_path))).read_text()
    assert log.startswith("epoch 1 loss 0.9") and KEY not in log and "[redacted]" in log
    diff = Path(client.download_artifacts(keep.info.run_id, "change.diff", str(tmp_path))).read_text()
    assert diff.startswith("-LR = 1e-4\n+LR = 2e-4") and KEY not in diff
    train_py = Path(client.download_artifacts(keep.info.run_id, "train.py", str(tmp_path))).read_text()
    assert train_py == TRAIN_PY


def test_mlflow_search_runs_shows_the_table_mlflow_ui_shows(night, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", night["tracker"].uri)
    table = mlflow.search_runs(
        experiment_names=["ner-autoresearch/myrepo"], order_by=["metrics.strict_f1 DESC"]
    )
    assert len(table) == 7  # the night and its six rows
    best = table.iloc[0]
    assert best["tags.run"] == "5" and best["tags.kept"] == "true"
    assert best["metrics.strict_f1"] == pytest.approx(0.37)


def test_a_broken_store_warns_once_never_raises_and_recovers(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mlruns").write_text("a file where the store's folder should be")
    warnings = []
    tracker = make_tracker(None, True, repo, repo / "mlflow.json", warnings.append)
    tracker.night_started(TAG, SETTINGS)
    tracker.run_logged(record(0, Status.BASELINE, [0.3]), {"LR": 1e-4}, TRAIN_PY, "", [])
    tracker.night_ended("aborted", ok=False)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("mlflow: could not start the night's run (")
    assert "the night goes on" in warnings[0]

    (repo / "mlruns").unlink()
    (repo / "mlruns").mkdir()
    tracker.run_logged(record(1, Status.DISCARD, [0.2]), {"LR": 2e-4}, TRAIN_PY, "", [])  # it tries again
    tracker.night_ended("--max-hours reached", ok=True)
    assert len(warnings) == 1
    client = MlflowClient(tracker.uri)
    parent = client.get_run(tracker._parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["policy"] == "confirm"
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker._parent_id}'"
    )
    assert [run.data.tags["run"] for run in runs] == ["1"]
    assert list((repo / "mlruns" / "artifacts").glob("*/artifacts/train.py"))  # in the repository's mlruns/


@pytest.fixture
def clean_environ():
    """The environment restored after the test (the tracker sets MLflow's variables with setdefault)."""
    saved = dict(os.environ)
    for name in ("MLFLOW_ALLOW_FILE_STORE", *HTTP_LIMITS):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_an_explicit_file_store_is_opened(tmp_path, clean_environ):
    warnings = []
    uri = (tmp_path / "mlruns").as_uri()
    tracker = make_tracker(uri, True, tmp_path, tmp_path / "mlflow.json", warnings.append)
    tracker.night_started(TAG, SETTINGS)
    tracker.run_logged(record(0, Status.BASELINE, [0.3]), {"LR": 1e-4}, TRAIN_PY, "", [])
    tracker.night_ended("done")
    assert warnings == []
    assert MlflowClient(tracker.uri).get_run(tracker._parent_id).info.status == "FINISHED"


def test_a_server_that_is_down_costs_seconds_not_minutes(tmp_path, clean_environ):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    warnings = []
    uri = f"http://127.0.0.1:{port}"
    tracker = make_tracker(uri, True, tmp_path, tmp_path / "mlflow.json", warnings.append)
    started = time.monotonic()
    tracker.night_started(TAG, SETTINGS)
    assert time.monotonic() - started < 30  # MLflow's default retries take about four minutes
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0]


def test_without_mlflow_the_flag_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(ImportError) as caught:
        make_tracker(None, True, tmp_path, tmp_path / "mlflow.json", print)
    assert str(caught.value) == f"--mlflow: mlflow is not installed; {INSTALL_HINT}"
    assert isinstance(make_tracker(None, False, tmp_path, tmp_path / "mlflow.json", print), NullTracker)


def test_the_project_imports_without_mlflow():
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "import research_loop.records.tracking as tracking\n"
        "tracking.NullTracker().run_logged(None, {}, '', '', [])\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
