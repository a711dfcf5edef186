"""Shared fixtures: the real data sets, and the Task 7 data prepared once per session away from data/.

The data comes from the shared data folder beside the project (the project root's parent's shared/data)
when it is there; otherwise from the public sources, downloaded once (sha256-checked, as prepare.py checks
its downloads) into the per-user cache. Without either, the tests that need data are skipped, saying how
to get it.
"""

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest

import prepare
from research_loop.preparation import build, sources

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Evaluated once, before any fixture points NER_AUTORESEARCH_CACHE at a temporary folder.
DOWNLOAD_DIR = prepare.cache_dir() / "test-data"

TASK7_TEST_URL = (
    "https://raw.githubusercontent.com/vl4dio4n/SMM4H-HeaRD-2026-Task-7/"
    "d03bb826e4391d363b2560c4196b48c41247f8e1/datasets/new_test_data.csv"
)
MTL_URL = (
    "https://raw.githubusercontent.com/cambridgeltl/MTL-Bioinformatics-2016/"
    "df0df02fae6dbb87d88ffcf323b9096528f06f84/data/"
)
# folder -> {file name: (public URL, sha256)}
PUBLIC_DATA = {
    "smm4h2026-task7": {
        **{name: (sources.TASK7_URL + name, sha) for name, sha in sources.TASK7_SHA256.items()},
        "sample_submission.csv": (
            sources.TASK7_URL + "sample_submission.csv",
            "385dc027db6c3097d27c3c5d7194a97e852e06837023502c0dfa16827af5c40c",
        ),
        "new_test_data_unlabeled.csv": (TASK7_TEST_URL, sources.TASK7_TEST_SHA256),
    },
    "ncbi-disease": {
        "train.tsv": (
            MTL_URL + "NCBI-disease-IOB/train.tsv",
            "58379baf4614b8d757d93dd7a21b202849ca99f9b9d71b49185523ff5443300c",
        ),
        "devel.tsv": (
            MTL_URL + "NCBI-disease-IOB/devel.tsv",
            "b4e1e7efcc2a35047bf2f3d281648357470e674f555d4a26a0049ac37d59cc61",
        ),
        "test.tsv": (
            MTL_URL + "NCBI-disease-IOB/test.tsv",
            "8f088ce45dc4746592188f9e69de3d89d87f3bb8f0ed8c4a287d018123fa148d",
        ),
    },
    "bc5cdr": {
        "train.tsv": (
            MTL_URL + "BC5CDR-IOB/train.tsv",
            "b731361c0ed73afd04cc5fdad39afcdfd8f325d6e46c282339185a91d1af4c14",
        ),
        "devel.tsv": (
            MTL_URL + "BC5CDR-IOB/devel.tsv",
            "b909de65c4f7e3c23bb09ad52d654cdc92e96db941abe1a5dcf6f6010c03cff5",
        ),
        "test.tsv": (
            MTL_URL + "BC5CDR-IOB/test.tsv",
            "e41a2843a5fff0cd8d1a88cb147968d61ae29336ca70cddc3d7fb8ff21dfa1e8",
        ),
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_folder(name: str) -> Path:
    """The shared copy of a public data folder, else a checked download of it; skips the test without
    either."""
    if (SHARED_DATA / name).is_dir():
        return SHARED_DATA / name
    folder = DOWNLOAD_DIR / name
    for file_name, (url, expected) in PUBLIC_DATA[name].items():
        path = folder / file_name
        if path.is_file() and sha256(path) == expected:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=60) as response:
                path.with_suffix(".partial").write_bytes(response.read())
        except OSError as error:  # no network, HTTP errors, timeouts
            pytest.skip(
                f"no {name} data: {SHARED_DATA / name} does not exist and downloading {url} failed "
                f"({getattr(error, 'reason', error)}); run the tests once with internet access (the files "
                f"are kept in {folder}), or copy the files there"
            )
        if sha256(path.with_suffix(".partial")) != expected:
            pytest.skip(f"no {name} data: {url} did not give the published file (sha256 mismatch)")
        os.replace(path.with_suffix(".partial"), path)
    return folder


@pytest.fixture(scope="session")
def task7_dir() -> Path:
    """The official Task 7 files: new_train_data.csv, new_dev_data.csv, new_test_data_unlabeled.csv and
    sample_submission.csv (read-only, please)."""
    return data_folder("smm4h2026-task7")


@pytest.fixture(scope="session")
def ncbi_dir() -> Path:
    """The NCBI Disease corpus as CoNLL: train.tsv, devel.tsv, test.tsv (token<TAB>tag; one type, Disease)."""
    return data_folder("ncbi-disease")


@pytest.fixture(scope="session")
def bc5cdr_dir() -> Path:
    """BC5CDR as CoNLL: train.tsv, devel.tsv, test.tsv (types Chemical and Disease)."""
    return data_folder("bc5cdr")


@pytest.fixture(scope="session")
def prepared_task7(tmp_path_factory, task7_dir):
    """A data dir prepared from the Task 7 train/dev CSVs and the unlabeled test file (read-only, please).

    The holdout gold goes to a temporary cache: NER_AUTORESEARCH_CACHE points there from the first use of
    this fixture until the session ends (then it is restored), so `holdout_gold_path(data_dir)` finds it.
    """
    root = tmp_path_factory.mktemp("prepared_task7")
    previous_cache = os.environ.get("NER_AUTORESEARCH_CACHE")
    os.environ["NER_AUTORESEARCH_CACHE"] = str(root / "cache")
    try:
        args = ["--source", str(task7_dir), "--test", str(task7_dir / "new_test_data_unlabeled.csv")]
        assert build.main([*args, "--out", str(root / "data")]) == 0
        yield root / "data"
    finally:
        if previous_cache is None:
            os.environ.pop("NER_AUTORESEARCH_CACHE", None)
        else:
            os.environ["NER_AUTORESEARCH_CACHE"] = previous_cache
