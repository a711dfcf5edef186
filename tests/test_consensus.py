"""`consensus RUN`: models vote on a real run's predicted spans, end to end through the real SDK clients
against the local fakes, which answer from the question (so a run with many spans stays fast): the vote
rules, re-bounding, abstentions, scores (checked with evaluate.py on the written files), the cache, the
cost cap, summary.json and the report, and the one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import fake_anthropic
import fake_openai
import pytest
from fake_anthropic import FakeAnthropic
from fake_openai import FakeOpenAI
from loop_helpers import FAKE_TRAIN_PY, ScriptedAgent, loop_config, make_repo, set_constant

import evaluate
import prepare
from research_loop.cli import commands as cli_support
from research_loop.consensus.run import ConsensusError, run_consensus
from research_loop.consensus.votes import Span, Vote, abstain, decide, parse_answer, settle
from research_loop.evaluation.acceptance import Confirm
from research_loop.export import coverage_problem
from research_loop.loop import run_loop
from research_loop.report.data import build_report
from research_loop.report.render import render_markdown

TAG = "c"
SONNET, MINI, LOCAL = "claude-sonnet-5-5", "gpt-5.4-mini", "llama3.3"
SONNET_CALL = (1000 * 2.00 + 200 * 10.00 + 3000 * 2.50) / 1e6  # fake_anthropic.DEFAULT_USAGE at $2/$10/$2.5
MINI_CALL = (1000 * 0.75 + 200 * 4.50) / 1e6  # fake_openai.DEFAULT_USAGE at $0.75/$4.50
TEST_ROWS = 6
TYPES = ["ClinicalImpacts", "SocialImpacts"]

# The fake train.py, also predicting the holdout rows (as the real one does) with the lexicon, on the first
# QUALITY share of rows; QUALITY 0.2 gives about 40 spans (each question builds a new SDK client: ~60 ms).
HOLDOUT_BLOCK = '''    holdout = [json.loads(line) for line in open(args.data / "holdout.jsonl", encoding="utf-8")]
    with open(args.out / "pred_holdout.jsonl", "w", encoding="utf-8") as file:
        for index, row in enumerate(holdout):
            tags = lexicon_tags(train_rows, row["tokens"]) if index < quality * len(holdout) else ["O"] * len(row["tokens"])
            file.write(json.dumps({"id": row["id"], "tags": tags}) + "\\n")
'''
TEST_LINE = '    if PREDICT_TEST and (args.data / "test.jsonl").is_file():\n'
TRAIN_PY = set_constant(set_constant(FAKE_TRAIN_PY.replace(TEST_LINE, HOLDOUT_BLOCK + TEST_LINE), "PREDICT_TEST", True),
                        "QUALITY", 0.2)


# ----- The fakes, answering from the question -----

QUESTION = re.compile(r"The predicted span: tokens (\d+) to (\d+), type (\w+):")


def asked_span(prompt: str) -> Span:
    start, last, kind = QUESTION.search(prompt).groups()
    return Span(int(start), int(last) + 1, kind)


def cut(span: Span) -> Span:
    """The re-bound the fakes propose: a longer span cut to its first token, a one-token span re-typed."""
    if span.end - span.start > 1:
        return Span(span.start, span.start + 1, span.type)
    return Span(span.start, span.end, next(kind for kind in TYPES if kind != span.type))


def policy(model: str, span: Span) -> str:
    """The scripted votes: Sonnet drops spans starting at a multiple of 3 and re-bounds the rest with cut();
    mini drops even starts and keeps odd ones; the local model garbles starts at multiples of 5 and keeps
    spans starting at multiples of 7, and re-bounds the rest like Sonnet."""
    rebound = json.dumps({"decision": "rebound", **cut(span).shown()})
    if model == SONNET:
        return '{"decision": "drop"}' if span.start % 3 == 0 else rebound
    if model == MINI:
        return '{"decision": "drop"}' if span.start % 2 == 0 else '```json\n{"decision": "keep"}\n```'
    if span.start % 5 == 0:
        return "Sure! I would keep it."
    return '{"decision": "keep", "reason": "a consequence"}' if span.start % 7 == 0 else rebound


class AnsweringAnthropic(FakeAnthropic):
    def _reply_for(self, body):
        reply = fake_anthropic.message(fake_anthropic.text(policy(body["model"], asked_span(
            body["messages"][0]["content"]))))
        return 200, {}, {**reply, "model": body["model"]}


class AnsweringOpenAI(FakeOpenAI):
    refused: ClassVar[set] = set()  # models answered with 401 (set it on the instance)

    def _reply_for(self, body):
        if body["model"] in self.refused:
            return 401, {}, json.dumps(fake_openai.error(401, "Incorrect API key provided")["body"])
        usage = None if body["model"] == LOCAL else fake_openai.DEFAULT_USAGE
        reply = fake_openai.completion(content=policy(body["model"], asked_span(body["messages"][1]["content"])),
                                       usage=usage)
        return 200, {}, json.dumps({**reply, "model": body["model"]})


def expected_tags(tags: list[str], models: list[str], min_votes: int | None = None) -> list[str]:
    """What the vote should give, computed from the scripted policies with the documented rules (cut() never
    reaches another span, so no re-bound falls back)."""
    out = ["O"] * len(tags)
    for kind, start, end in evaluate.spans(tags):
        span = Span(start, end, kind)
        answers = [json.loads(re.sub(r"^```json\n|\n```$", "", policy(model, span))) for model in models
                   if not policy(model, span).startswith("Sure")]
        support = [answer["decision"] for answer in answers if answer["decision"] != "drop"]
        if answers and len(support) < (min_votes or (len(answers) + 1) // 2):
            continue
        chosen = cut(span) if support.count("rebound") > support.count("keep") else span
        out[chosen.start:chosen.end] = [f"B-{chosen.type}"] + [f"I-{chosen.type}"] * (chosen.end - chosen.start - 1)
    return out


def valid_bio(tags: list[str]) -> bool:
    return all(not tag.startswith("I-") or (index and tags[index - 1][2:] == tag[2:] and tags[index - 1] != "O")
               for index, tag in enumerate(tags))


# ----- A night with one scored run, and a private copy per test -----


@pytest.fixture(scope="module")
def night(tmp_path_factory, prepared_task7):
    """A confirm night's baseline (run 0): pred_val.jsonl, pred_holdout.jsonl and pred_test.csv (6 test
    rows), scored by the loop."""
    root = tmp_path_factory.mktemp("consensus_night")
    data = shutil.copytree(prepared_task7, root / "data")
    lines = (data / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:TEST_ROWS]
    (data / "test.jsonl").write_text("".join(lines), encoding="utf-8")
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["test.jsonl"] = prepare.sha256_file(data / "test.jsonl")
    manifest["splits"]["test"]["rows"] = TEST_ROWS
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    repo = make_repo(root, data, train_py=TRAIN_PY)
    run_loop(loop_config(repo, TAG, max_runs=1, policy=Confirm(trials=1), seeds=(42,)), ScriptedAgent([]))
    for name in ("pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv"):
        assert (repo / "runs" / TAG / "0000" / name).is_file(), name
    return repo


@pytest.fixture
def repo(night, tmp_path, monkeypatch):
    """A copy of the night, and a fresh answer cache (the holdout gold copied into it)."""
    copy = Path(shutil.copytree(night, tmp_path / "repo", symlinks=True))
    gold = prepare.holdout_gold_path(night / "data")
    cache = tmp_path / "cache"
    (cache / "holdout").mkdir(parents=True)
    shutil.copy2(gold, cache / "holdout" / gold.name)
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(cache))
    return copy


@pytest.fixture
def fakes(monkeypatch):
    with AnsweringAnthropic([]) as anthropic_server, AnsweringOpenAI([]) as openai_server:
        anthropic_server.install(monkeypatch)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        yield anthropic_server, openai_server


def run_folder(repo: Path) -> Path:
    return repo / "runs" / TAG / "0000"


def consensus(repo, fakes, models, **options):
    lines = []
    if any(model.startswith("openai:") for model in models):
        options.setdefault("base_url", fakes[1].url)
    result = run_consensus(repo, TAG, 0, models, echo=lines.append, **options)
    return result, lines + result.lines()


# ----- End to end -----


def test_three_models_vote_the_scores_are_evaluate_pys_and_a_rerun_asks_nothing(repo, fakes):
    models = [f"anthropic:{SONNET}", f"openai:{MINI}", f"openai:{LOCAL}"]
    result, lines = consensus(repo, fakes, models)
    folder, run = run_folder(repo) / "consensus", run_folder(repo)
    summary = json.loads((folder / "summary.json").read_text())
    spans = 0
    for name in ("pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv"):
        before, after = evaluate.read_tags(run / name), evaluate.read_tags(folder / name)
        assert list(after) == list(before)  # the run's rows, in its order
        for row_id, tags in before.items():
            spans += len(evaluate.spans(tags))
            assert after[row_id] == expected_tags(tags, [SONNET, MINI, LOCAL]), (name, row_id)
            assert valid_bio(after[row_id])
    assert spans == summary["spans"] > 25
    assert sum(summary["spans_by_split"].values()) == spans and summary["spans_by_split"]["test"] > 0
    assert coverage_problem(folder / "pred_test.csv", prepare.load_split("test", repo / "data"), evaluate) is None

    gold = prepare.holdout_gold_path(repo / "data")
    for key, path, gold_path in (("val", folder / "pred_val.jsonl", repo / "data" / "val.jsonl"),
                                 ("run_val", run / "pred_val.jsonl", repo / "data" / "val.jsonl"),
                                 ("holdout", folder / "pred_holdout.jsonl", gold),
                                 ("run_holdout", run / "pred_holdout.jsonl", gold)):
        scored = evaluate.score_files(path, gold_path)
        assert summary[key] == {"strict_f1": scored["strict"]["f1"], "relaxed_f1": scored["relaxed"]["f1"]}, key
    trial = json.loads((run / "trial.json").read_text())
    assert summary["run_val"]["strict_f1"] == trial["score"]["strict"]  # the loop's own number for the run
    assert summary["val"] != summary["run_val"]

    answers = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 * spans and {answer["source"] for answer in answers} == {"asked"}
    garbled = [answer for answer in answers if answer["decision"] == "abstain"]
    assert garbled and all(answer["model"] == f"openai:{LOCAL}" and answer["problem"] == "not one JSON object"
                           and answer["span"]["first"] % 5 == 0 for answer in garbled)
    assert summary["abstentions"] == len(garbled)
    assert summary["rebounded"] > 0 and summary["dropped"] > 0 and summary["kept"] > 0
    assert summary["kept"] + summary["rebounded"] + summary["dropped"] + summary["unjudged"] == spans
    assert summary["models"] == models and summary["min_votes"] == 2 and summary["cost_usd"] is None  # llama
    assert summary["tokens_in"] == spans * (4000 + 1000 + 0) and summary["tokens_out"] == spans * 400
    assert len(fakes[0].requests) == spans and len(fakes[1].requests) == 2 * spans
    assert "[[" in fakes[0].requests[0]["messages"][0]["content"]
    assert "ClinicalImpacts" in fakes[0].requests[0]["system"]  # the task card
    assert any(line.startswith("val: strict F1 ") for line in lines)
    assert any(line.startswith("holdout: strict F1 ") for line in lines)
    assert result.asked == 3 * spans and result.cached == 0

    report = build_report(repo, TAG)
    (item,) = report.consensus
    assert item.run == 0 and item.models == models and item.spans == spans and item.cost_usd is None
    assert item.scores["holdout"] == (summary["holdout"]["strict_f1"], summary["holdout"]["relaxed_f1"])
    assert "## LLM consensus" in render_markdown(report)

    asked, first = (len(fakes[0].requests), len(fakes[1].requests)), (folder / "summary.json").read_text()
    result, _ = consensus(repo, fakes, models)  # the same again: all from the cache, the same result
    assert (len(fakes[0].requests), len(fakes[1].requests)) == asked and result.asked == 0
    assert (folder / "summary.json").read_text() == first and not list(run.glob("consensus-*"))

    result, lines = consensus(repo, fakes, models, min_votes=3)  # every model must support a span
    assert (len(fakes[0].requests), len(fakes[1].requests)) == asked and result.cached == 3 * spans
    for name in ("pred_val.jsonl", "pred_holdout.jsonl"):
        before, after = evaluate.read_tags(run / name), evaluate.read_tags(folder / name)
        for row_id, tags in before.items():
            assert after[row_id] == expected_tags(tags, [SONNET, MINI, LOCAL], min_votes=3), row_id
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["min_votes"] == 3 and summary["rule"] == "min-votes"
    assert summary["cost_usd"] is None and summary["tokens_in"] == spans * 5000  # what the answers cost
    (archived,) = run.glob("consensus-*")  # the majority's result, kept
    assert (archived / "summary.json").read_text() == first
    assert any("previous consensus" in line for line in lines)


def test_the_cost_cap_stops_asking_and_a_rerun_goes_on(repo, fakes):
    models = [f"anthropic:{SONNET}", f"openai:{MINI}"]
    result, lines = consensus(repo, fakes, models, max_cost_usd=0.02, workers=1)
    assert len(fakes[0].requests) == 2 and len(fakes[1].requests) == 1  # 0.0115, +0.00165, +0.0115: over
    summary = result.summary
    assert summary["cap_hit"] and summary["cost_usd"] == pytest.approx(2 * SONNET_CALL + MINI_CALL)
    assert summary["abstentions"] == 2 * summary["spans"] - 3 and summary["unjudged"] == summary["spans"] - 2
    assert any("cost cap ($0.02) was reached" in line for line in lines)
    before = evaluate.read_tags(run_folder(repo) / "pred_val.jsonl")
    after = evaluate.read_tags(run_folder(repo) / "consensus" / "pred_val.jsonl")
    assert sum(after[row] != tags for row, tags in before.items()) <= 2  # unanswered spans stand as predicted

    result, _ = consensus(repo, fakes, models, max_cost_usd=0.02, workers=1)  # goes on where it stopped
    assert result.cached == 3 and result.asked == 4 and result.spent_usd == pytest.approx(2 * SONNET_CALL + 2 * MINI_CALL)
    assert len(fakes[0].requests) == 4 and len(fakes[1].requests) == 3
    assert result.summary["cost_usd"] == pytest.approx(4 * SONNET_CALL + 3 * MINI_CALL)
    with pytest.raises(ConsensusError, match=r"^no model answered \(not asked: the cost cap was reached\); nothing"):
        consensus(repo, fakes, ["anthropic:claude-haiku-4-5"], max_cost_usd=0)  # nothing of it cached
    assert len(fakes[0].requests) == 4 and (run_folder(repo) / "consensus" / "summary.json").is_file()


def test_an_unpriced_local_model_does_not_count_toward_the_cap(repo, fakes):
    result, lines = consensus(repo, fakes, [f"openai:{LOCAL}"], max_cost_usd=0.001)
    assert not result.summary["cap_hit"] and result.asked == result.summary["spans"]
    assert result.summary["cost_usd"] is None and any("cost of the answers: unknown" in line for line in lines)


def test_a_model_with_a_rejected_key_stops_and_abstains(repo, fakes):
    fakes[1].refused = {MINI}
    result, lines = consensus(repo, fakes, [f"anthropic:{SONNET}", f"openai:{MINI}"])
    assert len(fakes[1].requests) <= 8  # the requests in flight when it first failed, then no more
    assert result.summary["abstentions"] == result.summary["spans"]
    assert any(line.startswith(f"openai:{MINI}") and "rejected the API key" in line for line in lines)
    with pytest.raises(ConsensusError, match=r"^no model answered \(.*rejected the API key.*\); nothing written$"):
        consensus(repo, fakes, [f"openai:{MINI}"])


def test_a_voter_that_cannot_answer_is_refused_before_any_question(repo, fakes):
    fakes[1].models = ("some-other-model",)
    with pytest.raises(ConsensusError, match=rf"^--llm openai:{MINI}: .*does not serve it \(it serves some-other"):
        consensus(repo, fakes, [f"anthropic:{SONNET}", f"openai:{MINI}"])
    fakes[0].models_reply = fake_anthropic.error(401, "authentication_error", "invalid x-api-key")
    with pytest.raises(ConsensusError, match=rf"^--llm anthropic:{SONNET}: .*401.*invalid x-api-key"):
        consensus(repo, fakes, [f"anthropic:{SONNET}"])
    assert not fakes[0].requests and not fakes[1].requests  # no question was put
    assert not list(run_folder(repo).glob("consensus*"))


def test_the_command_line(repo, fakes):
    command = [sys.executable, "agent_loop.py", "consensus", "0", "--tag", TAG, "--llm", f"anthropic:{SONNET}",
               "--max-cost-usd", "0.03"]
    done = subprocess.run(command, check=False, cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "val: strict F1" in done.stdout and "holdout: strict F1" in done.stdout and "wrote " in done.stdout
    assert "the cost cap ($0.03) was reached" in done.stdout and len(fakes[0].requests) <= 3 + 7
    printed = []
    assert cli_support.consensus(repo, 0, ["gemini:pro"], None, None, None, 5.0,
                                 lambda line, err=False: printed.append((line, err))) == 1
    assert printed == [("error: --llm 'gemini:pro': unknown backend 'gemini'; choose one of anthropic, openai", True)]


def test_one_line_errors(repo, fakes, monkeypatch):
    def fails(pattern, models=(f"anthropic:{SONNET}",), tag=TAG, run=0, **options):
        with pytest.raises(ConsensusError) as raised:
            run_consensus(repo, tag, run, list(models), echo=lambda *_: None, **options)
        message = str(raised.value)
        assert re.search(pattern, message) and "\n" not in message, message

    fails(r"unknown backend 'gemini'", ["gemini:pro"])
    fails(r"expected BACKEND:MODEL", ["claude"])
    fails(r"unknown anthropic model; allowed: .*claude-sonnet-5-5", ["anthropic:claude-2"])
    fails(r"given twice", [f"anthropic:{SONNET}", f"anthropic:{SONNET}"])
    fails(r"--min-votes 2: between 1 and the number of models \(1\)", min_votes=2)
    fails(r"no night 'nope' .*\(nights: c\)", tag="nope")
    fails(r"night c has no run 7 \(its runs are 0 to 0\)", run=7)
    fails(r"--base-url http://x is for openai: models", base_url="http://x")
    (run_folder(repo) / "pred_holdout.jsonl").unlink()
    fails(r"runs/c/0000/pred_holdout.jsonl: not found")
    (run_folder(repo) / "pred_val.jsonl").unlink()
    fails(r"run 0 of night c has no predictions")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    fails(r"ANTHROPIC_API_KEY is not set")
    monkeypatch.delenv("OPENAI_API_KEY")
    fails(r"OPENAI_API_KEY is not set .*--base-url", [f"openai:{MINI}"])
    assert not fakes[0].requests and not fakes[1].requests
    assert not list(run_folder(repo).glob("consensus*"))


# ----- The rules, one by one -----

SPAN = Span(4, 7, "ClinicalImpacts")


def vote(decision, start=None, end=None, kind="ClinicalImpacts"):
    if decision == "keep":
        return Vote("keep", SPAN)
    return Vote("rebound", Span(start, end, kind)) if decision == "rebound" else Vote(decision)


def test_answers_are_read_strictly():
    assert parse_answer('{"decision": "keep"}', SPAN, 20, TYPES) == Vote("keep", SPAN)
    assert parse_answer(' ```\n{"decision": "drop", "reason": "no"}\n``` ', SPAN, 20, TYPES) == Vote("drop")
    assert parse_answer('{"decision": "rebound", "first": 5, "last": 9, "type": "SocialImpacts"}', SPAN, 20,
                        TYPES) == Vote("rebound", Span(5, 10, "SocialImpacts"))
    assert parse_answer('{"decision": "rebound", "first": 3, "last": 3}', SPAN, 20, TYPES).span == \
        Span(3, 4, "ClinicalImpacts")
    for text, problem in (("keep", "not one JSON object"), ('{"decision": "keep"} {"decision": "drop"}',
                                                            "not one JSON object"),
                          ('["keep"]', "a JSON list"), ('{"decision": "maybe"}', "is not keep, drop or rebound"),
                          ('{"decision": "keep", "type": "SocialImpacts"}', "unexpected keys type"),
                          ('{"decision": "rebound", "first": 5}', "whole numbers"),
                          ('{"decision": "rebound", "first": true, "last": 5}', "whole numbers"),
                          ('{"decision": "rebound", "first": 6, "last": 5}', "not within"),
                          ('{"decision": "rebound", "first": 5, "last": 20}', "not within"),
                          ('{"decision": "rebound", "first": 5, "last": 6, "type": "Drug"}', "not one of"),
                          ('{"decision": "drop", "reason": 3}', "reason is not a string")):
        parsed = parse_answer(text, SPAN, 20, TYPES)
        assert parsed.decision == "abstain" and problem in parsed.problem, text


def test_the_vote():
    cut = ("rebound", 4, 5)
    assert decide(SPAN, [vote("keep"), vote("drop"), vote("drop")], None) is None
    assert decide(SPAN, [vote("keep"), vote("drop")], None) == SPAN  # a tie keeps the tagger's span
    assert decide(SPAN, [vote("keep"), vote("drop"), abstain("x")], None) == SPAN
    assert decide(SPAN, [abstain("x"), abstain("y")], 2) == SPAN  # nobody answered: it stands
    assert decide(SPAN, [vote("keep"), vote("drop"), vote("drop")], 1) == SPAN
    assert decide(SPAN, [vote("keep"), vote(*cut), abstain("x")], 3) is None
    assert decide(SPAN, [vote(*cut), vote(*cut), vote("keep")], None) == Span(4, 5, "ClinicalImpacts")
    assert decide(SPAN, [vote(*cut), vote("keep"), vote("drop")], None) == SPAN  # 1-1: the span's own
    # Two re-bounds tied: the one sharing more tokens with the span, then the earlier start.
    assert decide(SPAN, [vote("rebound", 4, 5), vote("rebound", 5, 7), vote("drop")], None) == Span(5, 7, SPAN.type)
    assert decide(SPAN, [vote("rebound", 3, 6), vote("rebound", 5, 8)], None) == Span(3, 6, SPAN.type)


def test_overlapping_rebounds_fall_back_to_the_tagger_spans():
    first, second, third = Span(0, 2, "A"), Span(3, 5, "A"), Span(8, 9, "B")
    grown = Span(0, 4, "A")
    assert settle([(first, grown), (second, second), (third, None)]) == [first, second]
    assert settle([(first, grown), (second, Span(3, 9, "A")), (third, third)]) == [first, second, third]
    assert settle([(first, Span(0, 3, "A")), (second, second)]) == [Span(0, 3, "A"), second]  # adjacent is fine
