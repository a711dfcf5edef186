"""Acceptance policies on scripted scores (paired and unpaired, the noise floor), and the night-level rules
built on them: closed directions, the blind holdout, a null agent's night under confirm and monotonic."""

import json
import math
from statistics import mean, stdev

import pytest
from loop_helpers import FAKE_TRAIN_PY, ScriptedAgent, loop_config, make_repo, results

from research_loop.agents.builtin_agent import NullAgent
from research_loop.agents.tools import ToolSession
from research_loop.evaluation import holdout
from research_loop.evaluation.acceptance import (
    Confirm,
    Monotonic,
    Standing,
    estimate_noise,
    make_policy,
    pooled_sd,
)
from research_loop.loop import run_loop

Z_99 = 2.3263478740408408  # one-sided 1% normal quantile, from tables
Z_80 = 0.8416212335729143  # 80% normal quantile, from tables
TAG = "t"
KEYS = [(42, None), (43, None), (44, None)]
FOLD_KEYS = [(42, 0), (42, 1), (42, 2)]


def standing(best, sd=0.01, keys=KEYS):
    from research_loop.evaluation.acceptance import Noise

    return Standing(best=dict(zip(keys, best)), noise=Noise(sd, 10, 0.0, "test"))


def decide(policy, scores, best, keys=KEYS, sd=0.01):
    return policy.decide(dict(enumerate(scores)), keys, standing(best, sd, keys) if best else Standing())


# ----- Confirm on scripted scores -----


def test_confirm_runs_the_baseline_on_every_trial():
    policy = Confirm(trials=3)
    assert decide(policy, [], None).run == (0, 1, 2)
    assert decide(policy, [0.5], None).run == (1, 2)
    assert decide(policy, [0.5, 0.52, 0.48], None).action == "keep"


def test_confirm_screens_on_the_first_trial_then_runs_the_rest_together():
    best = [0.50, 0.52, 0.48]
    policy = Confirm()
    assert decide(policy, [], best).run == (0,)
    assert decide(policy, [0.50], best).action == "discard"  # a tie is not ahead
    assert decide(policy, [0.49], best).action == "discard"
    assert decide(policy, [0.51], best).run == (1, 2)  # once ahead, every other trial, side by side


def test_paired_confirm_tests_the_mean_difference_against_its_own_spread():
    best = [0.50, 0.60, 0.40]  # very different trials (folds): pairing cancels their difficulty
    margin = Z_99 * 0.01 / math.sqrt(3)
    policy = Confirm(paired=True)
    assert policy.margin(3, 3, 0.01) == pytest.approx(margin)
    below = [value + margin - 0.002 for value in best]
    above = [value + margin + 0.002 for value in best]
    assert decide(policy, below, best, FOLD_KEYS).action == "discard"
    assert decide(policy, above, best, FOLD_KEYS).action == "keep"
    assert "mean paired gain" in decide(policy, above, best, FOLD_KEYS).reason
    assert decide(policy, [0.53, 0.58, 0.39], best, FOLD_KEYS).action == "discard"  # ahead on the first fold only


def test_unpaired_confirm_keeps_only_a_mean_gain_beyond_the_margin():
    best = [0.50, 0.52, 0.48]
    margin = Z_99 * 0.01 * math.sqrt(2 / 3)
    policy = Confirm(paired=False)
    assert policy.margin(3, 3, 0.01) == pytest.approx(margin)
    assert decide(policy, [0.51, 0.52, 0.47 + 3 * (margin - 0.003)], best).action == "discard"
    assert decide(policy, [0.51, 0.53, 0.46 + 3 * (margin + 0.003)], best).action == "keep"


def test_confirm_never_keeps_below_min_delta():
    policy = Confirm(min_delta=0.02)
    assert decide(policy, [0.515] * 3, [0.50] * 3, sd=0.0001).action == "discard"
    assert decide(policy, [0.525] * 3, [0.50] * 3, sd=0.0001).action == "keep"


def test_detectable_gain_is_the_margin_plus_the_power_quantile():
    sd = 0.012
    assert Confirm(paired=False).detectable_gain(sd) == pytest.approx((Z_99 + Z_80) * sd * math.sqrt(2 / 3))
    assert Confirm(paired=True).detectable_gain(sd) == pytest.approx((Z_99 + Z_80) * sd / math.sqrt(3))


def test_pooled_sd_pools_within_group_variances():
    a, b = [0.50, 0.52, 0.48], [0.61, 0.63]
    squares = sum((x - mean(a)) ** 2 for x in a) + sum((x - mean(b)) ** 2 for x in b)
    sd, df = pooled_sd([a, b, [0.7]])  # one-value groups carry no noise information
    assert df == 3 and sd == pytest.approx(math.sqrt(squares / 3))
    assert pooled_sd([[0.5]]) == (None, 0)
    assert pooled_sd([a])[0] == pytest.approx(stdev(a))


def test_the_noise_can_never_be_zero():
    """A baseline whose seeds all score the same (0.0 in a short run) must not make every gain a keep."""
    floor = 1 / 78  # one gold span of val's 78
    for paired in (True, False):
        noise = estimate_noise(Confirm(paired=paired), [0.0, 0.0, 0.0], [], [], [], floor)
        assert noise.sd == pytest.approx(floor) and "floor" in noise.source
    policy = Confirm()
    best = Standing(best=dict(zip(KEYS, [0.0, 0.0, 0.0])), noise=estimate_noise(policy, [0.0] * 3, [], [], [], floor))
    assert policy.decide({0: 0.01, 1: 0.01, 2: 0.01}, KEYS, best).action == "discard"  # +0.01 is inside the floor


def test_paired_noise_uses_a_conservative_prior_until_pairs_are_measured():
    baseline = [0.50, 0.52, 0.48]
    prior = estimate_noise(Confirm(paired=True), baseline, [], [], [], floor=0.001)
    assert prior.sd == pytest.approx(math.sqrt(2) * stdev(baseline)) and "prior" in prior.source
    differences = [[0.05, 0.011, 0.009], [0.04, 0.012, 0.010], [0.03, 0.008, 0.014]]  # the first pair passed a screen
    measured = estimate_noise(Confirm(paired=True), baseline, [], differences, [], floor=0.001)
    _expected, df = pooled_sd([row[1:] for row in differences])
    assert df == 3 and "prior" in measured.source  # 3 degrees of freedom are not enough yet
    measured = estimate_noise(Confirm(paired=True), baseline, [], differences * 2, [], floor=0.001)
    assert measured.sd == pytest.approx(pooled_sd([row[1:] for row in differences * 2])[0])
    assert "measured" in measured.source


def test_monotonic_keeps_any_improvement_and_make_policy_checks_its_options():
    assert decide(Monotonic(), [0.5001], [0.5]).action == "keep"
    assert isinstance(make_policy("monotonic"), Monotonic)
    assert make_policy("confirm", trials=5).trials == 5
    with pytest.raises(ValueError, match="2 or more"):
        make_policy("confirm", trials=1)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("bayes")


# ----- Night-level rules, with the fast fake train.py -----

# The fake plus run-to-run noise like a GPU's: every train.py and seed draws its own quality offset (seeded
# by the file's settings and top-level comments, which differ between proposals, so the test repeats
# exactly on any machine and does not change when the fake's code does), and it writes all-O holdout
# predictions.
NOISY_FAKE_TRAIN_PY = FAKE_TRAIN_PY.replace(
    "    keep = int(quality * len(rows))\n",
    "    import random\n"
    "    key = [line for line in Path(__file__).read_text().splitlines() if line[:1].isupper() or line[:2] == '# ']\n"
    "    quality += random.Random(repr(key) + str(args.seed)).gauss(0, NOISE_SD)\n"
    "    keep = int(quality * len(rows))\n"
    "    with open(args.out / 'pred_holdout.jsonl', 'w', encoding='utf-8') as file:\n"
    "        for line in open('data/holdout.jsonl', encoding='utf-8'):\n"
    "            row = json.loads(line)\n"
    "            file.write(json.dumps({'id': row['id'], 'tags': ['O'] * len(row['tokens'])}) + '\\n')\n",
).replace('SLEEP_S = 0.0', 'SLEEP_S = 0.0\nNOISE_SD = 0.05  # run-to-run noise in QUALITY')


@pytest.fixture
def noisy_repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7, NOISY_FAKE_TRAIN_PY)


def config(repo, **overrides):
    return loop_config(repo, TAG, **{"timeout_s": 30, "agent_max_failures": 1, **overrides})


def test_a_null_night_keeps_nothing_under_confirm_but_noise_under_monotonic(tmp_path, prepared_task7):
    kept = {}
    for policy in (make_policy("confirm"), Monotonic()):
        (tmp_path / policy.name).mkdir()
        repo = make_repo(tmp_path / policy.name, prepared_task7, NOISY_FAKE_TRAIN_PY)
        run_loop(config(repo, max_runs=13, policy=policy, check_duplicates=False, close_after=0), NullAgent())
        rows = results(repo)
        assert len(rows) == 13 and rows[0]["status"] == "baseline"
        kept[policy.name] = sum(row["status"] == "keep" for row in rows)
        if policy.name == "confirm":
            assert rows[0]["seeds"] == "42,43,44" and rows[0]["strict_f1_sd"]
            screened = [row for row in rows[1:] if row["seeds"] == "42"]
            assert screened, "some candidates must stop after the first seed"
            state = (repo / "CURRENT_STATE.md").read_text()
            assert "Noise (sd of paired differences)" in state and "floor" in state
            assert "(1 seed)" in state and "(3 seeds)" in state
    assert kept["confirm"] == 0
    assert kept["monotonic"] >= 1  # the same noise fools the one-seed rule


def test_a_closed_direction_goes_back_before_training_until_program_md_reopens_it(noisy_repo):
    failing = [("QUALITY", 0.1 + i / 100) for i in range(5)]  # five discards in direction "quality"

    class Reopener(ScriptedAgent):
        """After the bounce, the human reopens the direction in program.md (between runs)."""

        def propose(self, context):
            if context.feedback and "closed" in context.feedback:
                program = noisy_repo / "program.md"
                program.write_text(program.read_text() + "\n- quality: worth another look\n")
            return super().propose(context)

    agent = Reopener([*failing, ("QUALITY", 0.2), ("QUALITY", 0.9)])
    run_loop(config(noisy_repo, max_runs=7, close_after=5), agent)
    rows = results(noisy_repo)
    assert [row["status"] for row in rows[1:6]] == ["discard"] * 5
    assert "closed" in agent.contexts[6].feedback  # QUALITY 0.2 went back untrained ...
    assert rows[6]["status"] == "keep" and rows[6]["description"] == "QUALITY = 0.9"  # ... then reopened
    assert not (noisy_repo / "runs" / TAG / "0007").exists()


def test_a_closed_direction_shows_in_current_state_and_bounces_into_an_invalid_row(noisy_repo):
    agent = ScriptedAgent([("QUALITY", 0.1 + i / 100) for i in range(5)] + [("QUALITY", 0.2)] * 4)
    run_loop(config(noisy_repo, max_runs=7, close_after=5, max_bounces=3), agent)
    rows = results(noisy_repo)
    assert rows[6]["status"] == "invalid" and "closed" in rows[6]["note"]
    assert "| quality | 6 |" in (noisy_repo / "CURRENT_STATE.md").read_text()
    assert "| closed |" in (noisy_repo / "CURRENT_STATE.md").read_text()


def test_holdout_scores_go_only_to_the_loop_only_file(noisy_repo, prepared_task7):
    import prepare

    run_loop(config(noisy_repo, max_runs=2), ScriptedAgent([("QUALITY", 0.9)]))
    gold = prepare.holdout_gold_path(noisy_repo / "data")
    path = holdout.scores_path(gold, noisy_repo, TAG)
    entries = holdout.read_scores(path)
    assert [entry["role"] for entry in entries] == ["baseline", "keep", "final"]
    assert entries[1]["run"] == "1" and entries[1]["strict_f1"] == 0.0  # all-O holdout predictions
    assert not path.is_relative_to(noisy_repo)
    for name in ("results.tsv", "CURRENT_STATE.md"):
        assert "holdout" not in (noisy_repo / name).read_text().lower()
    tools = ToolSession(noisy_repo, (noisy_repo / "train.py").read_text())
    for request in (str(path), str(gold), f"../{path.name}", "runs/t/0001/pred_holdout.jsonl", "data/holdout.jsonl"):
        result = tools.call("view_file", {"path": request})
        assert result.is_error, request
        assert json.dumps(entries[0]) not in result.content


# ----- Ties: a candidate that scores exactly the best's score is never kept -----

TIE = 0.18487394957983194  # run 8's and run 5's strict F1 in the night that kept a tie; rounds up at 6 places
TIE_POLICIES = {
    "monotonic": (Monotonic(), KEYS[:1]),
    "confirm paired": (Confirm(paired=True), KEYS),
    "confirm unpaired": (Confirm(paired=False), KEYS),
    "confirm cv": (Confirm(paired=True), FOLD_KEYS),
}


def tied_trial(keys, scores):
    """A finished Trial whose trials scored `scores` (as trial.outcome_of leaves them: unrounded)."""
    from research_loop.evaluation.scoring import TrialScore
    from research_loop.evaluation.trial import Candidate, Trial, TrialOutcome

    done = {index: TrialOutcome(index, seed, fold, "c", "ok", 1.0, score=TrialScore(score, score).to_json())
            for index, ((seed, fold), score) in enumerate(zip(keys, scores))}
    return Trial(Candidate(8, "c", "", "b", "a no-op", "none"), list(keys), done)


def best_record(keys, scores, tmp_path, resumed):
    """The best run's record as the loop holds it: in memory as the recorder made it, or read back from
    results.tsv as a resumed loop does."""
    from research_loop.records.ledger import Ledger, read_records
    from research_loop.records.run_record import RunRecord, Status

    record = RunRecord(run=5, tag=TAG, status=Status.KEEP, commit="b", seeds=[seed for seed, _ in keys],
                       folds=[fold for _, fold in keys if fold is not None])
    record.set_scores(list(scores), list(scores), {})
    if not resumed:
        return record
    Ledger(tmp_path / "results.tsv", tmp_path / "store" / "results.tsv", []).append(record)
    return read_records(tmp_path / "results.tsv")[0]


@pytest.mark.parametrize("resumed", [False, True], ids=["in memory", "after a resume"])
@pytest.mark.parametrize("name", list(TIE_POLICIES))
def test_a_tie_with_the_best_is_never_kept(name, resumed, tmp_path):
    from research_loop.evaluation.acceptance import Noise

    policy, keys = TIE_POLICIES[name]
    scores = [TIE, TIE + 0.01, TIE - 0.01][: len(keys)]
    assert round(TIE, 6) > TIE  # the case that was kept: rounding the candidate alone made it look ahead
    best = best_record(keys, scores, tmp_path, resumed)
    # No noise at all (margin 0), so only the comparison itself can tell a tie from a gain.
    standing = Standing(best=best.scores_by_trial(), noise=Noise(0.0, 10, 0.0, "test"))
    verdict = tied_trial(keys, scores).next_step(policy, standing)
    assert verdict.action == "discard", verdict
    assert "<=" in verdict.reason
    # A gain of one unit in the last logged place is still a gain.
    ahead = tied_trial(keys, [score + 2e-6 for score in scores])
    verdict = ahead.next_step(policy, standing)
    assert verdict.action == "keep", verdict


def test_a_no_op_that_ties_the_best_is_never_kept_in_a_night_nor_after_a_resume(tmp_path, prepared_task7):
    """The null agent's comment-only changes score exactly the best's F1 (the fake is deterministic); at a
    QUALITY whose F1 rounds up at results.tsv's 6 decimals, the tie used to be kept under monotonic."""
    from loop_helpers import expected_strict_f1, fake_quality, set_constant

    (tmp_path / "probe").mkdir()
    probe = make_repo(tmp_path / "probe", prepared_task7)
    quality = next(q / 100 for q in range(30, 96)
                   if round(f := expected_strict_f1(probe, fake_quality(q / 100)), 6) > f > 0)
    (tmp_path / "night").mkdir()
    repo = make_repo(tmp_path / "night", prepared_task7, set_constant(FAKE_TRAIN_PY, "QUALITY", quality))
    settings = {"policy": Monotonic(), "check_duplicates": False, "close_after": 0}
    run_loop(config(repo, max_runs=3, **settings), NullAgent())
    run_loop(config(repo, max_runs=2, **settings), NullAgent())  # the same command again: a resume
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline"] + ["discard"] * 4, [row["note"] for row in rows]
    assert len({row["strict_f1"] for row in rows}) == 1  # every one a tie
    score = f"{float(rows[0]['strict_f1']):.4f}"
    assert [row["note"] for row in rows[1:]] == [f"{score} <= best {score}"] * 4
