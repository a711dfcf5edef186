"""Acceptance policies on scripted score sequences, and the night-level rules built on them: the noise
floor, closed directions, the blind holdout, and a null agent's night under confirm versus monotonic."""

import json
import math
from statistics import mean, stdev

import pytest
from loop_helpers import FAKE_TRAIN_PY, ScriptedAgent, make_repo, results

from research_loop import holdout
from research_loop.acceptance import Confirm, Monotonic, Standing, make_policy, pooled_noise
from research_loop.agent_tools import ToolSession
from research_loop.builtin_agent import NullAgent
from research_loop.loop import LoopConfig, run_dir, run_loop

Z_99 = 2.3263478740408408  # one-sided 1% normal quantile, from tables
Z_80 = 0.8416212335729143  # 80% normal quantile, from tables
TAG = "t"


# ----- Confirm on scripted scores -----


def test_confirm_runs_the_baseline_on_every_seed():
    policy = Confirm(seeds=(42, 43, 44))
    assert [policy.decide(s, Standing()).seed for s in ([], [0.5], [0.5, 0.52])] == [42, 43, 44]
    assert policy.decide([0.5, 0.52, 0.48], Standing()).action == "keep"


def test_confirm_discards_after_one_seed_when_not_ahead_on_that_seed():
    best = Standing(best_scores=[0.50, 0.52, 0.48], noise_sd=0.01, noise_df=2)
    policy = Confirm()
    assert policy.decide([], best).seed == 42
    assert policy.decide([0.50], best).action == "discard"  # a tie is not ahead
    assert policy.decide([0.49], best).action == "discard"
    assert policy.decide([0.51], best).action == "run" and policy.decide([0.51], best).seed == 43
    assert policy.decide([0.51, 0.40], best).seed == 44  # once ahead, all seeds run


def test_confirm_keeps_only_a_mean_gain_beyond_the_noise_margin():
    best = Standing(best_scores=[0.50, 0.52, 0.48], noise_sd=0.01, noise_df=2)
    margin = Z_99 * 0.01 * math.sqrt(2 / 3)  # 0.0190
    policy = Confirm()
    assert policy.margin(3, 3, 0.01) == pytest.approx(margin)
    assert policy.decide([0.51, 0.52, 0.47 + 3 * (margin - 0.003)], best).action == "discard"  # gain: margin - .003
    assert policy.decide([0.51, 0.53, 0.46 + 3 * (margin + 0.003)], best).action == "keep"  # gain: margin + .003
    assert policy.decide([0.60, 0.45, 0.46], best).action == "discard"  # one lucky seed is not enough


def test_confirm_never_keeps_below_min_delta():
    best = Standing(best_scores=[0.50, 0.50, 0.50], noise_sd=0.0001, noise_df=10)
    policy = Confirm(min_delta=0.02)
    assert policy.decide([0.515, 0.515, 0.515], best).action == "discard"
    assert policy.decide([0.525, 0.525, 0.525], best).action == "keep"


def test_detectable_gain_is_the_margin_plus_the_power_quantile():
    sd = 0.012
    expected = (Z_99 + Z_80) * sd * math.sqrt(2 / 3)
    assert Confirm().detectable_gain(sd) == pytest.approx(expected)


def test_pooled_noise_pools_within_run_variances():
    a, b = [0.50, 0.52, 0.48], [0.61, 0.63]
    squares = sum((x - mean(a)) ** 2 for x in a) + sum((x - mean(b)) ** 2 for x in b)
    sd, df = pooled_noise([a, b, [0.7]])  # one-seed runs carry no noise information
    assert df == 3 and sd == pytest.approx(math.sqrt(squares / 3))
    assert pooled_noise([[0.5]]) == (None, 0)
    assert pooled_noise([a])[0] == pytest.approx(stdev(a))


def test_monotonic_keeps_any_improvement_and_make_policy_checks_its_options():
    assert Monotonic().decide([0.5001], Standing(best_scores=[0.5])).action == "keep"
    assert isinstance(make_policy("monotonic"), Monotonic)
    assert make_policy("confirm", seeds=5).seeds == (42, 43, 44, 45, 46)
    with pytest.raises(ValueError, match="--seeds 2 or more"):
        make_policy("confirm", seeds=1)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("bayes")


# ----- Night-level rules, with the fast fake train.py -----

# The fake plus run-to-run noise like a GPU's: each run folder and seed draws its own quality offset
# (seeded by the folder's path relative to the repository, so the test repeats exactly on any machine),
# and it writes all-O holdout predictions.
NOISY_FAKE_TRAIN_PY = FAKE_TRAIN_PY.replace(
    "    keep = int(quality * len(rows))\n",
    "    import random\n"
    "    quality += random.Random(str(args.out) + str(args.seed)).gauss(0, NOISE_SD)\n"
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
    settings = {"repo": repo, "tag": TAG, "timeout_s": 30, "kill_grace_s": 1, "progress": False,
                "agent_retry_s": 0.01, "agent_max_failures": 1}
    return LoopConfig(**{**settings, **overrides})


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
            assert "Seed noise (sd of strict F1 between seeds)" in state
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
    run_loop(config(noisy_repo, max_runs=7, policy=Monotonic(seed=42), close_after=5), agent)
    rows = results(noisy_repo)
    assert [row["status"] for row in rows[1:6]] == ["discard"] * 5
    assert "closed" in agent.contexts[6].feedback  # QUALITY 0.2 went back untrained ...
    assert rows[6]["status"] == "keep" and rows[6]["description"] == "QUALITY = 0.9"  # ... then reopened
    assert not (run_dir(noisy_repo, TAG, 7)).exists()


def test_a_closed_direction_shows_in_current_state_and_bounces_into_an_invalid_row(noisy_repo):
    agent = ScriptedAgent([("QUALITY", 0.1 + i / 100) for i in range(5)] + [("QUALITY", 0.2)] * 4)
    run_loop(config(noisy_repo, max_runs=7, policy=Monotonic(seed=42), close_after=5, max_bounces=3), agent)
    rows = results(noisy_repo)
    assert rows[6]["status"] == "invalid" and "closed" in rows[6]["note"]
    assert "| quality | 6 |" in (noisy_repo / "CURRENT_STATE.md").read_text()
    assert "| closed |" in (noisy_repo / "CURRENT_STATE.md").read_text()


def test_holdout_scores_go_only_to_the_loop_only_file(noisy_repo, prepared_task7):
    import prepare

    run_loop(config(noisy_repo, max_runs=2, policy=Monotonic(seed=42)), ScriptedAgent([("QUALITY", 0.9)]))
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
