"""Tests for prepare.py on the real shared data: row and span counts, the blind holdout, formats, bad input."""

import ast
import csv
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from seqeval.metrics.sequence_labeling import get_entities

import prepare
from research_loop.preparation import build, sources

REPO = Path(__file__).resolve().parents[1]
TYPES = ["ClinicalImpacts", "SocialImpacts"]
# The published checksums, written out here rather than read from prepare.py.
SHARED_SHA256 = {
    "new_train_data.csv": "618dbac2c98896eca2b30f3d657bc116ce4180dae84c9c2486e487e417c5b6fa",
    "new_dev_data.csv": "597a8bad0612a35c4613b37a62795e4c1146e81a0e5e4ce9c21b4d9fe542fa1b",
    "new_test_data_unlabeled.csv": "4fa37b47c36ee4a127eb994aa3f32b4f40533f7bcad17a33babb1e98b8a51518",
}
# Runs the CLI with the recorded Task 7 checksums replaced by those of edited files (argv[1], JSON), so an
# edited CSV gets past the checksum and reaches the row checks; argv[2:] are prepare.py's arguments.
PATCHED_CHECKSUMS_CLI = (
    "import json, sys; from research_loop.preparation import build, sources; "
    "sources.TASK7_SHA256.update(json.loads(sys.argv[1])); sys.exit(build.main(sys.argv[2:]))"
)
PATCHED_URL_CLI = (
    "import sys; from research_loop.preparation import build, sources; sources.TASK7_URL = sys.argv[1]; "
    "sys.exit(build.main(sys.argv[2:]))"
)


def read_official(task7_dir: Path, name: str) -> pd.DataFrame:
    """An official Task 7 CSV with its list cells parsed (independently of prepare.py's reader)."""
    frame = pd.read_csv(task7_dir / name, dtype=str, keep_default_na=False)
    for column in ("tokens", "ner_tags"):
        if column in frame:
            frame[column] = frame[column].map(ast.literal_eval)
    return frame


def type_counts(tag_lists) -> dict[str, int]:
    counts = Counter(span[0] for tags in tag_lists for span in get_entities(list(tags)))
    return {t: counts.get(t, 0) for t in sorted(counts)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {path.name: sha256(path) for path in sorted(folder.iterdir())}


def run_cli(*args, cache: Path, wrapper: list[str] | None = None) -> subprocess.CompletedProcess:
    """prepare.py in a fresh interpreter (a fresh hash seed too), holdout gold sent to `cache`."""
    command = [sys.executable, *(["-c", *wrapper] if wrapper else ["prepare.py"]), *map(str, args)]
    env = {**os.environ, "NER_AUTORESEARCH_CACHE": str(cache)}
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# ----- The real Task 7 data -----


def test_train_rows_keep_tokens_ids_and_spans_of_the_csv(task7_dir, prepared_task7):
    train = prepare.load_split("train", prepared_task7)
    source = read_official(task7_dir, "new_train_data.csv")
    assert len(train) == len(source) == 842
    assert [row["id"] for row in train] == [f"train_{i:04d}" for i in range(842)]
    assert [row["source_id"] for row in train] == list(source["ID"])  # the repeated official IDs kept
    assert [row["tokens"] for row in train] == list(source["tokens"])  # mojibake and all
    assert any("â€" in token for row in train for token in row["tokens"])
    assert [row["tags"] for row in train] == list(source["ner_tags"])
    expected = type_counts(source["ner_tags"])
    assert expected == {"ClinicalImpacts": 256, "SocialImpacts": 87}
    assert type_counts(row["tags"] for row in train) == expected
    assert prepare.read_manifest(prepared_task7)["splits"]["train"]["spans"] == expected


def test_dev_rows_split_into_val_and_a_disjoint_stratified_holdout(task7_dir, prepared_task7):
    val = prepare.load_split("val", prepared_task7)
    holdout = prepare.load_split("holdout", prepared_task7)
    dev = read_official(task7_dir, "new_dev_data.csv")
    assert len(val) + len(holdout) == 258
    assert len(holdout) == 86
    val_ids, holdout_ids = {row["id"] for row in val}, {row["id"] for row in holdout}
    assert not val_ids & holdout_ids
    assert val_ids | holdout_ids == set(dev["ID"])
    gold = dict(zip(dev["ID"], dev["ner_tags"]))
    assert all(row["tags"] == gold[row["id"]] and row["source_id"] == row["id"] for row in val)
    # Stratified: the share of rows with a span is the same in the holdout as in the whole dev set (81 / 258).
    with_span = sum(bool(get_entities(gold[i])) for i in holdout_ids)
    assert abs(with_span / 86 - 81 / 258) < 0.02
    all_ids = [
        row["id"]
        for name in ("train", "val", "holdout", "test")
        for row in prepare.load_split(name, prepared_task7)
    ]
    assert len(all_ids) == len(set(all_ids))
    manifest = prepare.read_manifest(prepared_task7)
    assert manifest["splits"]["val"]["spans"] == type_counts(gold[row["id"]] for row in val)
    assert manifest["splits"]["holdout"]["spans"] == type_counts(gold[i] for i in holdout_ids)


def test_holdout_gold_lives_outside_the_data_dir_and_matches_the_dev_csv(task7_dir, prepared_task7):
    holdout = prepare.load_split("holdout", prepared_task7)
    assert all("tags" not in row for row in holdout)
    gold_path = prepare.holdout_gold_path(prepared_task7)
    assert gold_path.is_file()
    assert not gold_path.resolve().is_relative_to(prepared_task7.resolve())
    gold_rows = [json.loads(line) for line in gold_path.read_text(encoding="utf-8").splitlines()]
    dev = read_official(task7_dir, "new_dev_data.csv")
    dev_tags = dict(zip(dev["ID"], dev["ner_tags"]))
    assert [row["id"] for row in gold_rows] == [row["id"] for row in holdout]
    assert all(row["tags"] == dev_tags[row["id"]] for row in gold_rows)
    # Nothing under data/ holds a holdout row's tags, nor says where the gold is.
    holdout_ids = {row["id"] for row in holdout}
    for path in prepared_task7.iterdir():
        text = path.read_text(encoding="utf-8")
        assert gold_path.name not in text and str(gold_path.parent) not in text
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines()]
            assert not any(row["id"] in holdout_ids and "tags" in row for row in rows), path.name


def test_manifest_records_checksums_labels_and_inputs(task7_dir, prepared_task7):
    manifest = prepare.read_manifest(prepared_task7)
    written = {path.name for path in prepared_task7.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == written
    assert written == {"train.jsonl", "val.jsonl", "holdout.jsonl", "test.jsonl", "task.md"}
    assert all(manifest["files"][name] == sha256(prepared_task7 / name) for name in written)
    assert manifest["holdout_gold_sha256"] == sha256(prepare.holdout_gold_path(prepared_task7))
    assert manifest["task_card"] == {"file": "task.md", "source": "written by prepare.py from the data"}
    assert "aux" not in manifest and prepare.aux_names(prepared_task7) == []
    assert manifest["inputs"] == SHARED_SHA256
    assert manifest["format"] == "task7" and Path(manifest["source"]) == task7_dir.resolve()
    expected_labels = ["O", "B-ClinicalImpacts", "I-ClinicalImpacts", "B-SocialImpacts", "I-SocialImpacts"]
    assert prepare.load_labels(prepared_task7) == expected_labels
    assert prepare.load_entity_types(prepared_task7) == TYPES
    assert manifest["holdout_frac"] == pytest.approx(1 / 3)


def test_test_file_gives_578_token_only_rows_some_very_long(task7_dir, prepared_task7):
    test = prepare.load_split("test", prepared_task7)
    source = pd.read_csv(task7_dir / "new_test_data_unlabeled.csv", dtype=str)
    assert len(test) == 578
    assert [row["id"] for row in test] == list(source["ID"])
    assert all("tags" not in row for row in test)
    assert max(len(row["tokens"]) for row in test) > 9000


def test_every_run_gives_the_same_files(task7_dir, prepared_task7, tmp_path):
    result = run_cli(
        "--source",
        task7_dir,
        "--test",
        task7_dir / "new_test_data_unlabeled.csv",
        "--out",
        tmp_path / "data",
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path / "data") == snapshot(prepared_task7)
    assert "842" in result.stdout and "holdout" in result.stdout  # the summary
    gold_files = list((tmp_path / "cache" / "holdout").iterdir())
    assert [path.read_bytes() for path in gold_files] == [
        prepare.holdout_gold_path(prepared_task7).read_bytes()
    ]


def test_another_seed_gives_another_holdout(task7_dir, prepared_task7, tmp_path, monkeypatch):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    assert build.main(["--source", str(task7_dir), "--seed", "7", "--out", str(tmp_path / "data")]) == 0
    ids = {row["id"] for row in prepare.load_split("holdout", tmp_path / "data")}
    assert len(ids) == 86
    assert ids != {row["id"] for row in prepare.load_split("holdout", prepared_task7)}


def test_holdout_frac_zero_keeps_every_dev_row_in_val_and_drops_an_old_holdout(
    task7_dir, prepared_task7, tmp_path, monkeypatch
):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "data"
    shutil.copytree(prepared_task7, out)
    assert build.main(["--source", str(task7_dir), "--holdout-frac", "0", "--out", str(out)]) == 0
    assert len(prepare.load_split("val", out)) == 258
    assert sorted(path.name for path in out.iterdir()) == [
        "manifest.json",
        "task.md",
        "train.jsonl",
        "val.jsonl",
    ]
    manifest = prepare.read_manifest(out)
    assert "holdout" not in manifest["splits"] and manifest["holdout_gold_sha256"] is None
    with pytest.raises(prepare.DataError, match="holdout.jsonl"):
        prepare.load_split("holdout", out)
    assert not (tmp_path / "cache" / "holdout").exists()
    assert prepare.manifest_problems(out) == []


def test_download_reads_the_files_from_the_url_and_checks_them(task7_dir, tmp_path, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(task7_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(sources, "TASK7_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert build.main(["--out", str(tmp_path / "data")]) == 0
    finally:
        server.shutdown()
    manifest = prepare.read_manifest(tmp_path / "data")
    assert manifest["source"] == sources.TASK7_URL
    assert manifest["splits"]["train"]["rows"] == 842


# ----- Other BIO data sets -----


def test_ncbi_conll_folder(ncbi_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "data"
    assert build.main(["--format", "conll", "--source", str(ncbi_dir), "--out", str(out)]) == 0
    train, val, holdout = (prepare.load_split(name, out) for name in ("train", "val", "holdout"))
    test = prepare.load_split("test", out)
    assert (len(train), len(val) + len(holdout), len(test)) == (5424, 923, 940)
    assert len(holdout) == round(923 / 3)
    assert set(prepare.load_labels(out)) == {"O", "B-Disease", "I-Disease"}
    assert train[0]["id"] == "train_00000" and test[-1]["id"] == "test_00939"
    first_sentence = (ncbi_dir / "train.tsv").read_text(encoding="utf-8").split("\n\n")[0].splitlines()
    assert train[0]["tokens"] == [line.split("\t")[0] for line in first_sentence]
    assert train[0]["tags"] == [line.split("\t")[1] for line in first_sentence]
    assert all("tags" not in row for row in test)
    assert prepare.holdout_gold_path(out).is_file()
    card = (out / "task.md").read_text(encoding="utf-8")  # a generic card, written from the data
    assert card.startswith("# The task: named-entity recognition on ncbi-disease\n")
    assert "1 entity type, tagged BIO over the given word tokens: `Disease`." in card
    assert (
        "| train | 5,424 | " in card
        and f"Disease {type_counts(row['tags'] for row in train)['Disease']:,} |" in card
    )
    assert "| test | 940 | " in card and "(unlabeled)" in card
    assert "Reddit" not in card and "ClinicalImpacts" not in card


def test_hf_dataset_saved_to_disk(ncbi_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-Disease", "I-Disease"]

    def ncbi_rows(file: str, count: int) -> dict:
        sentences = (ncbi_dir / file).read_text(encoding="utf-8").split("\n\n")[:count]
        pairs = [[line.split("\t") for line in sentence.splitlines()] for sentence in sentences]
        return {
            "tokens": [[p[0] for p in s] for s in pairs],
            "ner_tags": [[names.index(p[1]) for p in s] for s in pairs],
        }

    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    splits = {"train": ("train.tsv", 40), "validation": ("devel.tsv", 15), "test": ("test.tsv", 6)}
    saved = tmp_path / "ncbi_hf"
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(ncbi_rows(*source), features=features)
            for split, source in splits.items()
        }
    ).save_to_disk(str(saved))
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "data"
    assert build.main(["--hf", str(saved), "--aux", f"hf_ncbi={saved}", "--out", str(out)]) == 0
    train = prepare.load_split("train", out)
    expected = ncbi_rows("train.tsv", 40)
    assert [row["tokens"] for row in train] == expected["tokens"]
    assert [row["tags"] for row in train] == [[names[i] for i in tags] for tags in expected["ner_tags"]]
    assert len(prepare.load_split("val", out)) + len(prepare.load_split("holdout", out)) == 15
    assert len(prepare.load_split("test", out)) == 6
    assert prepare.load_labels(out) == names
    assert prepare.read_manifest(out)["format"] == "hf"
    aux_rows, aux_labels = prepare.load_aux("hf_ncbi", out)  # train and validation; not test
    validation = ncbi_rows("devel.tsv", 15)
    assert [row["tokens"] for row in aux_rows] == expected["tokens"] + validation["tokens"]
    assert aux_labels == names and prepare.read_manifest(out)["aux"]["hf_ncbi"]["used"] == [
        "train",
        "validation",
    ]


# ----- Helpers train.py imports -----


def test_write_submission_csv_reproduces_the_official_sample(task7_dir, tmp_path):
    sample = task7_dir / "sample_submission.csv"
    with open(sample, newline="", encoding="utf-8") as handle:
        rows = [
            {"id": r["ID"], "source_id": r["ID"], "tags": ast.literal_eval(r["predicted_ner_tags"])}
            for r in csv.DictReader(handle)
        ]
    prepare.write_submission_csv(tmp_path / "sub.csv", rows)
    assert (tmp_path / "sub.csv").read_bytes() == sample.read_bytes()
    prepare.write_submission_csv(tmp_path / "two.csv", rows, ids=[rows[3]["id"], rows[0]["id"]])
    with open(tmp_path / "two.csv", newline="", encoding="utf-8") as handle:
        assert [r["ID"] for r in csv.DictReader(handle)] == [rows[3]["id"], rows[0]["id"]]
    with pytest.raises(prepare.DataError, match="dev_9999"):
        prepare.write_submission_csv(tmp_path / "bad.csv", rows, ids=["dev_9999"])


def test_write_predictions_jsonl_writes_id_and_tags_only(tmp_path):
    path = tmp_path / "runs" / "pred.jsonl"
    prepare.write_predictions_jsonl(path, [{"id": "dev_1", "tags": ("O", "B-X"), "tokens": ["a", "b"]}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"id": "dev_1", "tags": ["O", "B-X"]}
    ]


def test_missing_data_tells_the_user_to_run_prepare(tmp_path):
    for call in (lambda: prepare.load_split("train", tmp_path), lambda: prepare.load_labels(tmp_path)):
        with pytest.raises(prepare.DataError, match="prepare.py"):
            call()
    with pytest.raises(prepare.DataError, match="split"):
        prepare.load_split("dev", tmp_path)


def test_cache_location_follows_the_environment(prepared_task7, monkeypatch, tmp_path):
    name = sha256(prepared_task7 / "holdout.jsonl") + ".jsonl"
    monkeypatch.delenv("NER_AUTORESEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert (
        prepare.holdout_gold_path(prepared_task7) == tmp_path / "xdg" / "ner-autoresearch" / "holdout" / name
    )
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        prepare.holdout_gold_path(prepared_task7)
        == tmp_path / "home" / ".cache" / "ner-autoresearch" / "holdout" / name
    )


# ----- Bad input: exit 2, one stderr line, the existing data/ untouched -----


@pytest.fixture(scope="module")
def existing_data(prepared_task7, tmp_path_factory) -> Path:
    """A prepared data dir that failed runs write into; each test checks it is unchanged."""
    out = tmp_path_factory.mktemp("existing") / "data"
    shutil.copytree(prepared_task7, out)
    return out


def edited_task7_folder(
    task7_dir: Path, folder: Path, row_index: int, column: str, value: str | None
) -> dict[str, str]:
    """Copy the official CSVs into folder, set dev row `row_index`'s column (None drops the column)."""
    folder.mkdir()
    shutil.copy(task7_dir / "new_train_data.csv", folder)
    dev = pd.read_csv(task7_dir / "new_dev_data.csv", dtype=str, keep_default_na=False)
    if value is None:
        dev = dev.drop(columns=[column])
    else:
        dev.loc[row_index, column] = value
    dev.to_csv(folder / "new_dev_data.csv", index=False)
    return {name: sha256(folder / name) for name in ("new_train_data.csv", "new_dev_data.csv")}


def assert_rejected(
    result: subprocess.CompletedProcess, existing: Path, before: dict, *fragments: str
) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(existing) == before
    assert not list(existing.parent.glob(".prepare-*"))  # no staging folder left behind


DEV_ROW = 5  # the dev CSV row (0-based, after the header) that the edits below break


@pytest.mark.parametrize(
    ("column", "value", "fragments"),
    [
        ("ner_tags", "['O', 'O']", ["ner_tags", "2 tags for"]),
        ("ner_tags", "TAGS_WITH_B_UNDERSCORE", ["ner_tags", "invalid tag 'B_ClinicalImpacts'"]),
        ("tokens", "['I', 'did'", ["tokens", "not a Python list literal"]),
        ("ner_tags", None, ["row 1 (header)", "ner_tags", "missing column"]),
    ],
    ids=["length-mismatch", "invalid-tag", "malformed-cell", "missing-column"],
)
def test_bad_task7_rows_are_rejected(task7_dir, existing_data, tmp_path, column, value, fragments):
    dev = read_official(task7_dir, "new_dev_data.csv")
    if value == "TAGS_WITH_B_UNDERSCORE":
        value = repr(["B_ClinicalImpacts"] + ["O"] * (len(dev["tokens"][DEV_ROW]) - 1))
    checksums = edited_task7_folder(task7_dir, tmp_path / "src", DEV_ROW, column, value)
    before = snapshot(existing_data)
    result = run_cli(
        json.dumps(checksums),
        "--source",
        tmp_path / "src",
        "--out",
        existing_data,
        cache=tmp_path / "cache",
        wrapper=[PATCHED_CHECKSUMS_CLI],
    )
    row = [] if value is None else [f"row {dev['ID'][DEV_ROW]} (line {DEV_ROW + 2})"]
    assert_rejected(result, existing_data, before, "new_dev_data.csv", *row, *fragments)
    assert not (tmp_path / "cache").exists()


def test_checksum_mismatch_names_file_and_both_hashes(task7_dir, existing_data, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(task7_dir, source)
    data = bytearray((source / "new_train_data.csv").read_bytes())
    data[100] = ord("x") if data[100] != ord("x") else ord("y")
    (source / "new_train_data.csv").write_bytes(bytes(data))
    before = snapshot(existing_data)
    result = run_cli("--source", source, "--out", existing_data, cache=tmp_path / "cache")
    actual = sha256(source / "new_train_data.csv")
    assert_rejected(
        result,
        existing_data,
        before,
        "new_train_data.csv",
        SHARED_SHA256["new_train_data.csv"][:12],
        actual[:12],
    )


def test_missing_source_file(task7_dir, existing_data, tmp_path):
    (tmp_path / "src").mkdir()
    shutil.copy(task7_dir / "new_train_data.csv", tmp_path / "src")
    before = snapshot(existing_data)
    result = run_cli("--source", tmp_path / "src", "--out", existing_data, cache=tmp_path / "cache")
    assert_rejected(result, existing_data, before, "new_dev_data.csv", "not found")


def test_download_failure_suggests_source(existing_data, tmp_path):
    before = snapshot(existing_data)
    unreachable = "http://127.0.0.1:9/"  # the discard port: the connection is refused at once
    result = run_cli(unreachable, "--out", existing_data, cache=tmp_path / "cache", wrapper=[PATCHED_URL_CLI])
    assert_rejected(result, existing_data, before, "download failed", "--source DIR")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("ID,text\ntest_1,\"['a']\"\n", ["row 1 (header)", "tokens", "missing column"]),
        (
            "ID,tokens\ntest_1,\"['a']\"\ntest_2,\"['a', 'b'\"\n",
            ["row test_2 (line 3)", "tokens", "not a Python list"],
        ),
        ("ID,tokens\ntest_1,\"['a']\"\ntest_1,\"['b']\"\n", ["row test_1 (line 3)", "ID", "duplicate"]),
        (None, ["not found"]),
    ],
    ids=["missing-column", "malformed-cell", "duplicate-id", "missing-file"],
)
def test_bad_test_file_is_rejected(task7_dir, existing_data, tmp_path, content, fragments):
    test_file = tmp_path / "test.csv"
    if content is not None:
        test_file.write_text(content, encoding="utf-8")
    before = snapshot(existing_data)
    result = run_cli(
        "--source", task7_dir, "--test", test_file, "--out", existing_data, cache=tmp_path / "cache"
    )
    assert_rejected(result, existing_data, before, "test.csv", *fragments)


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("Huntington\tB_Disease", ["tag", "invalid tag 'B_Disease'"]),
        ("Huntington B-Disease", ["line", "token<TAB>tag"]),
    ],
    ids=["invalid-tag", "no-tab"],
)
def test_bad_conll_lines_are_rejected(ncbi_dir, existing_data, tmp_path, line, fragments):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ncbi_dir / "train.tsv", source)
    lines = (ncbi_dir / "devel.tsv").read_text(encoding="utf-8").split("\n")
    lines[4] = line  # inside the first sentence (line 5 of the file)
    (source / "devel.tsv").write_text("\n".join(lines), encoding="utf-8")
    before = snapshot(existing_data)
    result = run_cli(
        "--format", "conll", "--source", source, "--out", existing_data, cache=tmp_path / "cache"
    )
    assert_rejected(result, existing_data, before, "devel.tsv", "row dev_00000 (line 5)", *fragments)


def test_unwritable_holdout_gold_leaves_data_untouched(task7_dir, existing_data, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    before = snapshot(existing_data)
    result = run_cli("--source", task7_dir, "--out", existing_data, cache=not_a_folder)
    assert_rejected(result, existing_data, before, "holdout", "cannot write the holdout gold")


# ----- The prepared stamp and manifest_problems -----


def test_the_stamp_records_the_manifest_and_gold_and_problems_name_each_tampered_file(
    task7_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "data"
    args = ["--source", str(task7_dir), "--out", str(out)]
    assert build.main(args) == 0
    manifest = prepare.read_manifest(out)
    stamp_path = prepare.prepared_stamp_path(out)
    assert stamp_path.parent == tmp_path / "cache" / "prepared" and len(stamp_path.stem) == 16
    stamp = prepare.read_prepared_stamp(out)
    assert set(stamp) == {"data_dir", "manifest_sha256", "holdout_gold_sha256", "timestamp"}
    assert stamp["data_dir"] == str(out.resolve())
    assert stamp["manifest_sha256"] == sha256(out / "manifest.json")
    gold_path = prepare.holdout_gold_path(out)
    assert stamp["holdout_gold_sha256"] == manifest["holdout_gold_sha256"] == sha256(gold_path)
    assert prepare.manifest_problems(out) == []

    def problems_after(change, undo) -> list[str]:
        change()
        try:
            return prepare.manifest_problems(out)
        finally:
            undo()

    val = (out / "val.jsonl").read_bytes()
    extra_row = b'{"id": "dev_x", "source_id": "dev_x", "tokens": ["a"], "tags": ["O"]}\n'
    [line] = problems_after(
        lambda: (out / "val.jsonl").write_bytes(val + extra_row), lambda: (out / "val.jsonl").write_bytes(val)
    )
    assert line.startswith(f"{out / 'val.jsonl'}: sha256 ") and "differs from the manifest's" in line

    train = (out / "train.jsonl").read_bytes()
    [line] = problems_after(
        lambda: (out / "train.jsonl").unlink(), lambda: (out / "train.jsonl").write_bytes(train)
    )
    assert line == f"{out / 'train.jsonl'}: missing (the manifest lists it)"

    [line] = problems_after(
        lambda: (out / "test.jsonl").write_text("{}\n"), lambda: (out / "test.jsonl").unlink()
    )
    assert line == f"{out / 'test.jsonl'}: not listed in the manifest"

    # A consistent forgery: val edited and the manifest's checksum updated to match. The stamp catches it.
    manifest_text = (out / "manifest.json").read_text()

    def forge():
        (out / "val.jsonl").write_bytes(val + extra_row)
        (out / "manifest.json").write_text(
            manifest_text.replace(sha256_bytes(val), sha256(out / "val.jsonl"))
        )

    def restore():
        (out / "val.jsonl").write_bytes(val)
        (out / "manifest.json").write_text(manifest_text)

    [line] = problems_after(forge, restore)
    assert line.startswith(
        f"{out / 'manifest.json'}: not the manifest prepare.py wrote at {stamp['timestamp']}"
    )

    [line] = problems_after(
        lambda: stamp_path.rename(tmp_path / "stamp"), lambda: (tmp_path / "stamp").rename(stamp_path)
    )
    assert line.startswith(f"{out / 'manifest.json'}: no prepared stamp ({stamp_path})")

    # A copy of the folder is not what prepare.py wrote there.
    shutil.copytree(out, tmp_path / "copy")
    assert [line.split(":")[0] for line in prepare.manifest_problems(tmp_path / "copy")] == [
        str(tmp_path / "copy" / "manifest.json")
    ]
    assert prepare.manifest_problems(tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere' / 'manifest.json'}: not found; run `python prepare.py`"
    ]

    # A legitimate re-preparation (another split seed) gets a new stamp, and no problems.
    assert build.main([*args, "--seed", "7"]) == 0
    assert prepare.manifest_problems(out) == []
    assert (
        prepare.read_prepared_stamp(out)["manifest_sha256"]
        == sha256(out / "manifest.json")
        != stamp["manifest_sha256"]
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----- Auxiliary data sets for transfer -----


def conll_sentences(path: Path) -> list[list[list[str]]]:
    """[[token, tag], ...] per sentence of a CoNLL file, read independently of prepare.py."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [[line.split("\t") for line in block.splitlines()] for block in blocks if block.strip()]


def test_aux_sets_from_conll_folders_are_written_listed_and_loaded(
    task7_dir, ncbi_dir, bc5cdr_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "data"
    args = ["--source", str(task7_dir), "--aux", f"ncbi={ncbi_dir}", "--aux", f"bc5cdr={bc5cdr_dir}"]
    assert build.main([*args, "--out", str(out)]) == 0
    assert prepare.aux_names(out) == ["bc5cdr", "ncbi"]
    for name, folder, types in (
        ("ncbi", ncbi_dir, ["Disease"]),
        ("bc5cdr", bc5cdr_dir, ["Chemical", "Disease"]),
    ):
        rows, labels = prepare.load_aux(name, out)
        sentences = conll_sentences(folder / "train.tsv") + conll_sentences(
            folder / "devel.tsv"
        )  # not test.tsv
        assert [row["tokens"] for row in rows] == [[pair[0] for pair in s] for s in sentences]
        assert [row["tags"] for row in rows] == [[pair[1] for pair in s] for s in sentences]
        assert labels == ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
        own = json.loads((out / "aux" / name / "manifest.json").read_text())
        assert own["labels"] == labels and own["entity_types"] == types and own["rows"] == len(rows)
        assert own["used"] == ["train.tsv", "devel.tsv"] and Path(own["source"]) == folder.resolve()
        assert own["spans"] == type_counts(row["tags"] for row in rows)
        assert own["files"] == {"train.jsonl": sha256(out / "aux" / name / "train.jsonl")}
        entry = prepare.read_manifest(out)["aux"][name]
        assert (entry["labels"], entry["rows"], entry["source"]) == (labels, len(rows), own["source"])
        assert entry["files"] == {
            f"aux/{name}/{file}": sha256(out / "aux" / name / file)
            for file in ("train.jsonl", "manifest.json")
        }
    assert len(prepare.load_aux("ncbi", out)[0]) == 5424 + 923
    assert len(prepare.load_aux("bc5cdr", out)[0]) == 4560 + 4581
    card = (out / "task.md").read_text(encoding="utf-8")
    assert (
        "`ncbi`: 6,347 rows, types Disease" in card
        and "`bc5cdr`: 9,141 rows, types Chemical, Disease" in card
    )
    # The target data is the same as without --aux.
    assert prepare.load_labels(out) == [
        "O",
        "B-ClinicalImpacts",
        "I-ClinicalImpacts",
        "B-SocialImpacts",
        "I-SocialImpacts",
    ]

    assert prepare.manifest_problems(out) == []
    aux_file = out / "aux" / "ncbi" / "train.jsonl"
    aux_file.write_text(aux_file.read_text().replace('"Disease"', '"Chemical"', 1))
    [line] = prepare.manifest_problems(out)
    assert line.startswith(f"{aux_file}: sha256 ")
    with pytest.raises(
        prepare.DataError, match=r"no auxiliary data set 'ncbi_disease'.*prepared: bc5cdr, ncbi"
    ):
        prepare.load_aux("ncbi_disease", out)

    # Prepared again without --aux: the aux sets are gone, manifest and folder alike.
    assert build.main(["--source", str(task7_dir), "--out", str(out)]) == 0
    assert prepare.aux_names(out) == [] and not (out / "aux").exists()
    assert prepare.manifest_problems(out) == []


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        ("ncbi-disease=SRC", ["--aux 'ncbi-disease=", "simple identifier", "'ncbi-disease'"]),
        ("1st=SRC", ["simple identifier", "'1st'"]),
        ("ncbi", ["expected NAME=SOURCE"]),
        ("../x=SRC", ["simple identifier"]),
        ("ncbi=SRC --aux ncbi=SRC", ["--aux ncbi: given twice"]),
        ("task=TASK7", ["--aux task=", "expected a CoNLL folder", "or a Hugging Face dataset"]),
    ],
    ids=["hyphen", "digit-first", "no-source", "path", "twice", "not-conll"],
)
def test_bad_aux_options_are_one_line_errors(
    existing_data, task7_dir, ncbi_dir, tmp_path, capsys, option, fragments
):
    aux = option.replace("SRC", str(ncbi_dir)).replace("TASK7", str(task7_dir)).split(" --aux ")
    before = snapshot(existing_data)
    args = ["--source", str(task7_dir), *(x for a in aux for x in ("--aux", a)), "--out", str(existing_data)]
    assert build.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0]
    assert snapshot(existing_data) == before


# ----- The task card -----


def test_task7_task_card_describes_the_types_the_text_and_the_counts(prepared_task7, task7_dir):
    card = (prepared_task7 / "task.md").read_text(encoding="utf-8")
    assert "ClinicalImpacts" in card and "SocialImpacts" in card
    for words in (
        "overdose",
        "withdrawal",
        "addiction",
        "hospital",
        "job loss",
        "arrests",
        "family",
        "money",
    ):
        assert words in card
    assert "Reddit" in card and "â€™" in card and "submission_title : -" in card
    assert "| train | 842 | 20.5 / 123 | ClinicalImpacts 256, SocialImpacts 87 |" in card
    assert "| val | 172 | " in card and "| test | 578 | " in card and "/ 9,009 | (unlabeled)" in card
    assert "holdout" not in card.lower()  # the blind split stays out of the agent's prompt
    # The card goes to the agent's LLM: the source folder by name, never the user's directories.
    assert "Source: smm4h2026-task7 (task7)." in card and str(task7_dir.resolve().parent) not in card
    assert "/" not in card.split("Source:")[1].split("\n")[0]


def test_task_card_option_takes_the_users_file_as_it_is(task7_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "card.md"
    mine.write_text("# My task\n\nFind opioid impacts; be careful with negation.\n", encoding="utf-8")
    out = tmp_path / "data"
    assert build.main(["--source", str(task7_dir), "--task-card", str(mine), "--out", str(out)]) == 0
    assert (out / "task.md").read_bytes() == mine.read_bytes()
    manifest = prepare.read_manifest(out)
    assert manifest["task_card"] == {"file": "task.md", "source": str(mine.resolve())}
    assert manifest["files"]["task.md"] == sha256(mine)
    capsys.readouterr()
    before = snapshot(out)
    assert (
        build.main(
            ["--source", str(task7_dir), "--task-card", str(tmp_path / "nope.md"), "--out", str(out)]
        )
        == 2
    )
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.md'}: task card not found\n"
    assert snapshot(out) == before


# ----- CoNLL hints -----


def test_conll_errors_name_the_files_it_expects(existing_data, ncbi_dir, tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ncbi_dir / "train.tsv", source)
    before = snapshot(existing_data)
    assert build.main(["--format", "conll", "--source", str(source), "--out", str(existing_data)]) == 2
    assert capsys.readouterr().err == (
        f"error: {source / 'devel.tsv'}: file not found; --format conll expects train.tsv and devel.tsv "
        f"(optionally test.tsv) in {source}\n"
    )
    assert snapshot(existing_data) == before


def test_a_tsv_folder_without_format_conll_gets_the_hint(existing_data, ncbi_dir, capsys):
    before = snapshot(existing_data)
    assert build.main(["--source", str(ncbi_dir), "--out", str(existing_data)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "new_train_data.csv" in err[0] and "add `--format conll`" in err[0], err
    assert snapshot(existing_data) == before


def test_unwritable_prepared_stamp_leaves_data_untouched(existing_data, task7_dir, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    before = snapshot(existing_data)
    # No holdout, so no gold to write: the stamp is the first thing that needs the cache.
    args = ["--source", task7_dir, "--holdout-frac", "0", "--out", existing_data]
    result = run_cli(*args, cache=not_a_folder)
    assert_rejected(result, existing_data, before, "prepared", "cannot write the prepared stamp")


# ----- Test data without the shared folder -----


def test_fixtures_download_checked_public_data_when_there_is_no_shared_copy(ncbi_dir, tmp_path, monkeypatch):
    import conftest

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ncbi_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    published = {name: sha for name, (_, sha) in conftest.PUBLIC_DATA["ncbi-disease"].items()}
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "no-shared-data")
    monkeypatch.setattr(conftest, "DOWNLOAD_DIR", tmp_path / "test-data")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setitem(
        conftest.PUBLIC_DATA, "ncbi-disease", {name: (url + name, sha) for name, sha in published.items()}
    )
    try:
        folder = conftest.data_folder("ncbi-disease")
    finally:
        server.shutdown()
        server.server_close()  # connections are refused from now on
    assert folder == tmp_path / "test-data" / "ncbi-disease"
    assert {path.name: sha256(path) for path in folder.iterdir()} == published
    assert conftest.data_folder("ncbi-disease") == folder  # cached: no server needed any more

    (folder / "train.tsv").write_text("changed")  # a damaged copy is fetched again, and that fails here
    with pytest.raises(
        pytest.skip.Exception, match=r"no ncbi-disease data: .*run the tests once with internet"
    ):
        conftest.data_folder("ncbi-disease")
