"""Simulated annotators: choice-model frequencies, inter-annotator calibration, agreement of generated data."""
import json
import math
import random

import pytest

from tinyrlhf.errors import ConfigError
from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.annotators import (Annotator, AnnotatorPool, calibrate_tau, expected_agreement,
                                       expected_inter_agreement, measured_agreement, measured_inter_agreement,
                                       sigmoid)
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


def test_inter_annotator_agreement_closed_form():
    """Gap ln 3 and taus (1, 1): each annotator prefers the better one with p = sigmoid(ln 3) = 3/4, so two
    agree with p^2 + (1-p)^2 = 9/16 + 1/16 = 0.625. Taus (1, 2) on gap ln 3: p1 = 3/4,
    p2 = sigmoid(ln(3)/2) = 1/(1 + 3^-1/2) = 0.633975; i != j gives p1 p2 + (1-p1)(1-p2) = 0.566987.
    One annotator: two independent draws of it, p^2 + (1-p)^2. Zero gaps are left out."""
    g = math.log(3)
    assert expected_inter_agreement([g, 0.0], [1.0, 1.0]) == pytest.approx(0.625, abs=1e-12)
    assert expected_inter_agreement([g], [1.0]) == pytest.approx(0.625, abs=1e-12)
    p2 = 1 / (1 + 3 ** -0.5)
    assert expected_inter_agreement([-g], [1.0, 2.0]) == pytest.approx(0.75 * p2 + 0.25 * (1 - p2), abs=1e-12)
    # three annotators, two gaps: the closed form equals the brute-force mean over ordered i != j
    taus, gaps = [0.3, 0.5, 1.1], [0.2, -0.7]
    brute = []
    for gap in gaps:
        ps = [sigmoid(abs(gap) / t) for t in taus]
        brute += [ps[i] * ps[j] + (1 - ps[i]) * (1 - ps[j]) for i in range(3) for j in range(3) if i != j]
    assert expected_inter_agreement(gaps, taus) == pytest.approx(sum(brute) / len(brute), abs=1e-12)
    with pytest.raises(ConfigError):
        expected_inter_agreement([0.0], [1.0])


@pytest.mark.parametrize("target", [0.6, 0.73, 0.9])
def test_calibration_hits_inter_annotator_target(target):
    """`agreement` is the agreement BETWEEN two distinct annotators; with gold each agrees more often.
    With x_i = p_i - 1/2 in [0, 1/2]: two agree with 1/2 + 2 x_i x_j <= 1/2 + x_i/2 + x_j/2, so the
    agreement with gold is never below it; on these gaps it is 0.70 / 0.82 / 0.94 (measured) for targets
    0.6 / 0.73 / 0.9 -- calibrating agreement with gold instead would make the two equal."""
    gaps = _task_gaps("family_tree", 3000)
    pool = AnnotatorPool.calibrated(gaps, agreement=target, n_annotators=8, spread=0.5, seed=0)
    assert pool.expected_inter_agreement(gaps) == pytest.approx(target, abs=1e-6)   # bisection is exact
    assert pool.expected_agreement(gaps) > target + 0.03
    taus = [a.tau for a in pool.annotators]
    assert len(set(taus)) == 8 and max(taus) / min(taus) <= math.exp(1.0) + 1e-9


def test_calibration_is_monotone_and_validated():
    gaps = [0.1, -0.4, 0.0, 1.0, 0.25]
    taus = [calibrate_tau(gaps, a) for a in (0.6, 0.73, 0.9)]
    assert taus[0] > taus[1] > taus[2]
    # Zero gaps are left out: over the four nonzero ones, two draws of the one annotator agree 73 %.
    ps = [sigmoid(abs(g) / taus[1]) for g in gaps if g]
    assert sum(p * p + (1 - p) ** 2 for p in ps) / 4 == pytest.approx(0.73, abs=1e-6)
    for bad in (0.5, 1.0, 0.3):
        with pytest.raises(ConfigError):
            calibrate_tau(gaps, bad)
    with pytest.raises(ConfigError):
        calibrate_tau([0.0, 0.0], 0.73)
    with pytest.raises(ConfigError):
        expected_agreement([0.0], [1.0])


def test_empirical_agreement_of_a_calibrated_pool():
    """Simulated judgements on the calibration pairs: two distinct annotators agree ~ the target, and each
    agrees with gold ~ the pool's expected agreement with gold (9,000 draws: sd ~ 0.005)."""
    gaps = _task_gaps("positive_review", 3000, seed=1)
    pool, rng = AnnotatorPool.calibrated(gaps, 0.73, seed=3), random.Random(4)
    judged = []
    for _ in range(3):
        for g in gaps:
            ann = pool.pick(rng)
            judged.append((ann, g, 0.0) if ann.prefers_first(g, 0.0, rng) else (ann, 0.0, g))
    assert measured_inter_agreement(pool, judged, random.Random(5)) == pytest.approx(0.73, abs=0.02)
    with_gold = measured_agreement([(c, r) for _, c, r in judged])
    assert with_gold == pytest.approx(pool.expected_agreement(gaps), abs=0.02)
    assert with_gold > 0.78     # calibrating agreement with gold to 0.73 would give ~0.73 here


def test_second_annotator_is_distinct_and_unused_streams_stay_unused():
    pool, rng = AnnotatorPool.make(0.5, n_annotators=3, seed=1), random.Random(0)
    for _ in range(200):
        first = pool.pick(rng)
        assert pool.pick_other(first, rng).id != first.id
    solo = AnnotatorPool.make(0.5, n_annotators=1)
    assert solo.pick_other(solo.annotators[0], rng) == solo.annotators[0]
    # nearly noiseless annotators always agree; pairs with a zero gap are left out
    sharp = AnnotatorPool.make(1e-6, n_annotators=4)
    judged = [(sharp.annotators[i % 4], 0.9, 0.1) for i in range(50)] + [(sharp.annotators[0], 0.5, 0.5)]
    assert measured_inter_agreement(sharp, judged, random.Random(0)) == 1.0


def test_measuring_inter_annotator_agreement_changes_no_file(tmp_path, monkeypatch):
    """The second annotator draws from its own stream: with the measurement replaced by a constant, every
    data file is byte-identical (only the manifest's number differs)."""
    from tinyrlhf.tasks import generate
    small = dict(n_train_prompts=50, n_eval_prompts=10, n_pairs=200, n_rankings=10, n_binary=20, n_eval_pairs=10)
    write_task_data("family_tree", str(tmp_path / "a"), seed=1, **small)
    monkeypatch.setattr(generate, "measured_inter_agreement", lambda pool, judged, rng: 0.5)
    write_task_data("family_tree", str(tmp_path / "b"), seed=1, **small)
    for name in ("pairs.jsonl", "rankings.jsonl", "binary.jsonl", "eval_pairs.jsonl", "sft.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text())["annotators"] for d in "ab"]
    assert manifests[1]["inter_annotator_measured"] == 0.5 != manifests[0]["inter_annotator_measured"]


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_generated_pairs_agree_at_target(tmp_path, name):
    counts = write_task_data(name, str(tmp_path), seed=0, n_train_prompts=500, n_eval_prompts=10,
                             n_pairs=3000, n_rankings=10, n_binary=10, n_eval_pairs=10)
    ann = json.loads((tmp_path / "manifest.json").read_text())["annotators"]
    assert ann["inter_annotator_expected"] == pytest.approx(0.73, abs=1e-6)
    assert ann["inter_annotator_measured"] == pytest.approx(counts["inter_annotator"], abs=1e-6)  # rounded
    assert ann["agreement_measured"] == pytest.approx(counts["agreement"], abs=1e-6)
    assert counts["inter_annotator"] == pytest.approx(0.73, abs=0.03)        # 2,500+ pairs: sd ~ 0.009
    assert counts["agreement"] == pytest.approx(ann["agreement_expected"], abs=0.03)
    # with gold each annotator agrees more often than two annotators agree with each other, not trivially
    assert 0.76 < ann["agreement_expected"] < 0.9


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
    assert 0.74 < agree < 0.90   # annotators agree with gold ~82 % when two of them agree 73 %
