"""Simulated annotators: choice-model frequencies, calibration, agreement of generated data."""
import math
import random

import pytest

from tinyrlhf.errors import ConfigError
from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.annotators import (Annotator, AnnotatorPool, calibrate_tau, expected_agreement,
                                       measured_agreement, sigmoid)
from tinyrlhf.tasks.generate import write_task_data


def test_sigmoid_values_and_extremes():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(math.log(3)) == pytest.approx(0.75, abs=1e-12)   # 1 / (1 + 1/3)
    assert sigmoid(-math.log(3)) == pytest.approx(0.25, abs=1e-12)
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0        # no overflow


def test_bradley_terry_frequency():
    """P(a preferred) = sigmoid((0.6 - 0.2) / 0.4) = sigmoid(1) = 0.7311; 20,000 draws: sd 0.003."""
    ann, rng = Annotator("a", 0.4), random.Random(0)
    share = sum(ann.prefers_first(0.6, 0.2, rng) for _ in range(20000)) / 20000
    assert share == pytest.approx(sigmoid(1.0), abs=0.012)


def test_binary_label_frequency():
    """P(good) = sigmoid((0.1 - 0.4) / 0.3) = sigmoid(-1) = 0.2689."""
    ann, rng = Annotator("a", 0.3), random.Random(1)
    share = sum(ann.is_good(0.1, 0.4, rng) for _ in range(20000)) / 20000
    assert share == pytest.approx(sigmoid(-1.0), abs=0.012)


def test_plackett_luce_tiny_tau_is_gold_order():
    golds = [0.3, 1.2, -0.5, 0.9, 0.31]
    rng = random.Random(0)
    assert all(Annotator("a", 1e-6).rank(golds, rng) == [1, 3, 4, 0, 2] for _ in range(100))
    # With real noise the order is not always the gold one.
    noisy = {tuple(Annotator("b", 0.5).rank(golds, rng)) for _ in range(200)}
    assert len(noisy) > 5


def test_plackett_luce_first_place_is_softmax():
    """P(first = j) = exp(g_j/tau) / sum exp(g/tau); golds (0, 0.5, 1), tau 0.5: weights 1, e, e^2."""
    ann, rng = Annotator("a", 0.5), random.Random(2)
    firsts = [ann.rank([0.0, 0.5, 1.0], rng)[0] for _ in range(20000)]
    z = 1 + math.e + math.e ** 2
    for j, w in enumerate((1, math.e, math.e ** 2)):
        assert firsts.count(j) / 20000 == pytest.approx(w / z, abs=0.012)


def _task_gaps(name, n, seed=0):
    task, rng = get_task(name), random.Random(seed)
    gaps = []
    for p in task.prompts("train", n, seed):
        a, b = task.candidates(p, 2, rng)
        gaps.append(task.gold_reward(p, a) - task.gold_reward(p, b))
    return gaps


@pytest.mark.parametrize("target", [0.6, 0.73, 0.9])
def test_calibration_hits_target(target):
    gaps = _task_gaps("family_tree", 3000)
    pool = AnnotatorPool.calibrated(gaps, agreement=target, n_annotators=8, spread=0.5, seed=0)
    assert pool.expected_agreement(gaps) == pytest.approx(target, abs=0.02)
    assert pool.expected_agreement(gaps) == pytest.approx(target, abs=1e-6)   # bisection is exact
    taus = [a.tau for a in pool.annotators]
    assert len(set(taus)) == 8 and max(taus) / min(taus) <= math.exp(1.0) + 1e-9


def test_calibration_is_monotone_and_validated():
    gaps = [0.1, -0.4, 0.0, 1.0, 0.25]
    taus = [calibrate_tau(gaps, a) for a in (0.6, 0.73, 0.9)]
    assert taus[0] > taus[1] > taus[2]
    # Zero gaps are left out: the mean over the four nonzero ones hits the target.
    assert sum(sigmoid(abs(g) / taus[1]) for g in gaps if g) / 4 == pytest.approx(0.73, abs=1e-6)
    for bad in (0.5, 1.0, 0.3):
        with pytest.raises(ConfigError):
            calibrate_tau(gaps, bad)
    with pytest.raises(ConfigError):
        calibrate_tau([0.0, 0.0], 0.73)
    with pytest.raises(ConfigError):
        expected_agreement([0.0], [1.0])


def test_empirical_agreement_of_a_calibrated_pool():
    """Simulated judgements on the calibration pairs agree with gold ~ target (sd ~ 0.005 here)."""
    gaps = _task_gaps("positive_review", 3000, seed=1)
    pool, rng = AnnotatorPool.calibrated(gaps, 0.73, seed=3), random.Random(4)
    judged = []
    for _ in range(3):
        for g in gaps:
            judged.append((g, 0.0) if pool.pick(rng).prefers_first(g, 0.0, rng) else (0.0, g))
    assert measured_agreement(judged) == pytest.approx(0.73, abs=0.03)


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_generated_pairs_agree_with_gold_at_target(tmp_path, name):
    counts = write_task_data(name, str(tmp_path), seed=0, n_train_prompts=500, n_eval_prompts=10,
                             n_pairs=3000, n_rankings=10, n_binary=10, n_eval_pairs=10)
    assert counts["agreement"] == pytest.approx(0.73, abs=0.03)
    # and not trivially: the annotators disagree with gold on a real share of pairs
    assert counts["agreement"] < 0.8


def test_pool_is_deterministic_and_picks_everyone():
    a = AnnotatorPool.make(0.5, n_annotators=5, spread=0.5, seed=7)
    assert a == AnnotatorPool.make(0.5, n_annotators=5, spread=0.5, seed=7)
    assert a != AnnotatorPool.make(0.5, n_annotators=5, spread=0.5, seed=8)
    assert [x.id for x in a.annotators] == ["ann00", "ann01", "ann02", "ann03", "ann04"]
    rng = random.Random(0)
    assert {a.pick(rng).id for _ in range(200)} == {x.id for x in a.annotators}
    with pytest.raises(ConfigError):
        AnnotatorPool.make(0.0)


def test_held_out_pairs_carry_annotator_noise(tmp_path):
    """eval_pairs.jsonl is labelled by the annotators (some labels disagree with gold) at about the
    target agreement, so reward-model accuracy against labels and against gold are different numbers."""
    from tinyrlhf.data.records import read_records
    from tinyrlhf.tasks.generate import write_task_data

    write_task_data("family_tree", str(tmp_path), seed=0, n_train_prompts=200, n_pairs=600, n_rankings=5,
                    n_binary=5, n_eval_prompts=100, n_eval_pairs=800)
    pairs = read_records(str(tmp_path / "eval_pairs.jsonl"), "pair")
    agree = sum(p.meta["gold_chosen"] > p.meta["gold_rejected"] for p in pairs) / len(pairs)
    assert 0.66 < agree < 0.80
