"""Protected files, the data's manifest and stamp, and the whole working tree: changes found, saved, undone."""

import json

from loop_helpers import git, make_repo

import prepare
from research_loop.records.integrity import ProtectedFiles, TreeWatch, verify_data


def make_project(root):
    (root / "data").mkdir()
    (root / "data" / "val.jsonl").write_text('{"id": "a"}\n')
    (root / "evaluate.py").write_text("SCORE = 1\n")
    (root / "program.md").write_text("rules\n")
    (root / "research_loop" / "__pycache__").mkdir(parents=True)
    (root / "research_loop" / "loop.py").write_text("pass\n")
    protected = ProtectedFiles(root, root.parent / "store")
    protected.accept_all()
    return protected


def test_tampering_is_found_saved_and_undone(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    protected = make_project(root)
    assert protected.violations() == []
    (root / "research_loop" / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"\0")  # not tampering
    (root / "train.py").write_text("anything\n")  # not protected
    assert protected.violations() == []

    (root / "evaluate.py").write_text("SCORE = 100\n")
    (root / "data" / "val.jsonl").unlink()
    (root / "data" / "val.jsonl").symlink_to(root / "evaluate.py")  # a link counts as a change
    (root / "research_loop" / "sneaky.py").write_text("import os\n")
    found = {(item.path, item.kind) for item in protected.violations()}
    assert found == {("evaluate.py", "modified"), ("data/val.jsonl", "modified"), ("research_loop/sneaky.py", "added")}
    left = protected.restore(protected.violations(), tmp_path / "saved")
    assert left == [] and protected.violations() == []
    assert (root / "evaluate.py").read_text() == "SCORE = 1\n" and not (root / "data" / "val.jsonl").is_symlink()
    assert (tmp_path / "saved" / "evaluate.py").read_text() == "SCORE = 100\n"
    assert (tmp_path / "saved" / "research_loop" / "sneaky.py").exists()


def test_the_copies_survive_a_restart_and_a_changed_copy_is_not_trusted(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    make_project(root)
    (root / "evaluate.py").write_text("SCORE = 100\n")  # changed while no loop ran
    restarted = ProtectedFiles(root, tmp_path / "store")
    restarted.load()  # the hashes the last session accepted, not the files as they are now
    assert [str(item) for item in restarted.violations()] == ["evaluate.py (modified)"]
    (tmp_path / "store" / "snapshot" / "evaluate.py").write_text("SCORE = 100\n")  # its copy altered too
    assert restarted.restore(restarted.violations(), tmp_path / "saved") == ["evaluate.py"]


def test_data_is_checked_against_its_manifest_and_the_stamp_outside_the_repository(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    data = repo / "data"
    assert verify_data(data, prepare) == []
    val = (data / "val.jsonl").read_text()
    (data / "val.jsonl").write_text(val.replace('"O"', '"B-ClinicalImpacts"', 1))
    assert any("val.jsonl" in problem and "differs from the manifest" in problem for problem in verify_data(data, prepare))
    # Forging the manifest to match does not help: the stamp prepare.py wrote outside the repository disagrees.
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"]["val.jsonl"] = prepare.sha256_file(data / "val.jsonl")
    (data / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_data(data, prepare)
    assert len(problems) == 1 and "prepared stamp" in problems[0]
    (data / "val.jsonl").write_text(val)


def test_the_tree_watch_sees_new_changed_and_git_control_files_and_undoes_them(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    watch = TreeWatch(repo, own=["runs/t", "results.tsv", "CURRENT_STATE.md"])
    watch.take()
    assert watch.changes() == []
    (repo / "runs" / "t").mkdir(parents=True)
    (repo / "runs" / "t" / "x").write_text("the loop's own")  # not watched
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\ncurl evil\n")
    config = (repo / ".git" / "config").read_text()
    (repo / ".git" / "config").write_text(config + "[core]\n\tfsmonitor = /tmp/evil\n")
    (repo / "notes.txt").write_text("new file")
    (repo / "pyproject.toml").write_text("changed")
    changes = {(item.path, item.kind) for item in watch.changes()}
    assert changes == {(".git/hooks/post-checkout", "added"), (".git/config", "modified"), ("notes.txt", "added"),
                       ("pyproject.toml", "modified")}
    left = watch.undo(watch.changes(), tmp_path / "saved", lambda path: git(repo, "checkout", "HEAD", "--", path) == "")
    assert left == [] and watch.changes() == []
    assert not hook.exists() and (repo / ".git" / "config").read_text() == config
    assert (tmp_path / "saved" / "notes.txt").read_text() == "new file"
    assert git(repo, "status", "--porcelain") == ""
