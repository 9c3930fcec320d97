"""Evaluation metrics and ratings: known answers derived by hand in each docstring."""
import math

import numpy as np
import pytest

from tinyrlhf.eval.metrics import (bleu, bootstrap_ci, cluster_bootstrap_ci, distinct_n, mean_length, paired_bootstrap_ci, rouge_l,
                                   win_rate)
from tinyrlhf.eval.ratings import bradley_terry_ratings, elo_ratings


# -- bootstrap ---------------------------------------------------------------------------------------

def test_bootstrap_ci_constant_and_single_value():
    """Every resample of a constant list has the same mean, so the interval collapses to it."""
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_bootstrap_ci_covers_mean_shrinks_with_n_and_is_deterministic():
    """Width of a mean's CI goes like 1/sqrt(n): 100x the data -> about 1/10 the width."""
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    m_s, lo_s, hi_s = bootstrap_ci(small)
    m_l, lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == pytest.approx(small.mean(), abs=1e-12)
    ratio = (hi_l - lo_l) / (hi_s - lo_s)
    assert 0.05 < ratio < 0.2
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert bootstrap_ci(small, seed=3) != bootstrap_ci(small, seed=4)
    # width for N(0,1) data: about 2 * 1.96 / sqrt(n) (the sample sd enters, so allow 25 %)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.25)


def test_bootstrap_ci_coverage_is_near_nominal():
    """Over 200 datasets of 50 N(0,1) draws, the 95 % interval should contain the true mean 0 in about
    95 % of them (the percentile bootstrap runs a little narrow at n=50, hence the loose band)."""
    rng = np.random.default_rng(0)
    hits = sum(lo <= 0.0 <= hi for _, lo, hi in
               (bootstrap_ci(rng.normal(size=50), n_resamples=400, seed=i) for i in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_bootstrap_ci_cancels_shared_prompt_difficulty():
    """b = a - 0.1 exactly on every prompt: every resampled mean difference is 0.1, so the paired CI is
    the point (0.1, 0.1, 0.1) although a itself varies a lot between prompts."""
    a = np.random.default_rng(2).normal(scale=5.0, size=40)
    diff, lo, hi = paired_bootstrap_ci(a, a - 0.1)
    assert diff == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    d, lo, hi = paired_bootstrap_ci([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])  # diffs 0,1,2,3: mean 1.5
    assert d == 1.5 and 0.0 <= lo < 1.5 < hi <= 3.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_cluster_bootstrap_holds_the_seed_to_seed_spread():
    """Two seeds, no prompt noise inside a seed: seed 0 scores 0 on every prompt, seed 1 scores 1.
    Resampling seeds gives the seed sets {0,0}, {0,1}, {1,1} with probabilities 1/4, 1/2, 1/4, so the
    resampled means are 0, 0.5, 1 and the 2.5 % / 97.5 % quantiles are exactly 0 and 1. Pooling the 100
    values as if independent gives a narrow interval around 0.5 instead (about ±0.1)."""
    groups = [[0.0] * 50, [1.0] * 50]
    mean, low, high = cluster_bootstrap_ci(groups, seed=0)
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    _, plow, phigh = bootstrap_ci(groups[0] + groups[1], seed=0)
    assert phigh - plow < 0.25


def test_cluster_bootstrap_weighs_seeds_equally_and_matches_the_plain_bootstrap_for_one_seed():
    """Unequal group sizes: the estimate is the mean of the group means, (0 + 1) / 2, not the pooled mean
    (10 x 1 + 90 x 0) / 100 = 0.1. With one group the scheme is the plain percentile bootstrap: same estimate,
    and with 4000 resamples both interval ends agree to 0.01 (a tenth of the interval's half-width here)."""
    assert cluster_bootstrap_ci([[0.0] * 90, [1.0] * 10], seed=0)[0] == pytest.approx(0.5)
    x = np.random.default_rng(3).normal(size=200)
    m1, lo1, hi1 = cluster_bootstrap_ci([x], n_resamples=4000, seed=1)
    m2, lo2, hi2 = bootstrap_ci(x, n_resamples=4000, seed=2)
    assert m1 == pytest.approx(m2) and abs(lo1 - lo2) < 0.01 and abs(hi1 - hi2) < 0.01
    assert cluster_bootstrap_ci([x, x + 1], seed=5) == cluster_bootstrap_ci([x, x + 1], seed=5)  # deterministic
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([[1.0], []])
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([[1.0, float("nan")]])


def test_cluster_bootstrap_is_wider_than_pooling_when_seeds_differ():
    """Three seeds with the same prompt noise and means 0, 0.2, 0.4: the pooled bootstrap treats 600 values as
    independent and calls the mean 0.2 precise to about ±0.1; the cluster interval must be wider (it contains
    the spread of the seed means), and still contain the true mean 0.2."""
    noise = np.random.default_rng(0).normal(scale=1.0, size=200)
    groups = [noise + shift for shift in (0.0, 0.2, 0.4)]
    _, low, high = cluster_bootstrap_ci(groups, seed=0)
    _, plow, phigh = bootstrap_ci(np.concatenate(groups), seed=0)
    assert high - low > 1.3 * (phigh - plow)
    assert low < 0.2 + noise.mean() < high


def test_win_rate_counts_ties_as_half():
    """[1, 1, 0.5, 0] -> (1 + 1 + 0.5 + 0) / 4 = 0.625; all wins -> (1, 1, 1)."""
    rate, lo, hi = win_rate([1, 1, 0.5, 0])
    assert rate == 0.625 and 0.0 <= lo <= rate <= hi <= 1.0
    assert win_rate([1, 1, 1]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        win_rate([0.7])


# -- text metrics ------------------------------------------------------------------------------------

def test_distinct_n_known_case():
    """texts "a b a b" and "a b c": unigrams a,b,a,b,a,b,c -> 3 unique / 7; bigrams (a b),(b a),(a b),
    (a b),(b c) -> 3 unique / 5 (no bigram spans the two texts)."""
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n([], 1) == 0.0 and distinct_n(["a"], 2) == 0.0  # no n-gram at all -> 0


def test_mean_length():
    """"ab cd" is 5 characters, 2 words; "efg" is 3 characters, 1 word -> means 4 and 1.5."""
    assert mean_length(["ab cd", "efg"]) == {"chars": 4.0, "words": 1.5}


def test_rouge_l_known_values():
    """LCS("the cat sat on the mat", "the cat sat on a mat") = "the cat sat on mat", 5 tokens of 6 on
    each side: P = R = F = 5/6. LCS("a b c", "a x c d") = "a c": P = 2/3, R = 2/4,
    F = 2PR/(P+R) = (2/3)/(7/6) = 4/7. Corpus value = mean of the two F's."""
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(5 / 6)
    assert rouge_l(["a b c"], ["a x c d"]) == pytest.approx(4 / 7)
    assert rouge_l(["the cat sat on the mat", "a b c"],
                   ["the cat sat on a mat", "a x c d"]) == pytest.approx((5 / 6 + 4 / 7) / 2)
    assert rouge_l(["Ann, Bob."], ["Ann, Bob."]) == pytest.approx(1.0)


def test_bleu_known_value():
    """Prediction "the cat sat on the mat", reference "the cat sat on a mat" (same length: no brevity
    penalty). Clipped n-gram precisions: 1-gram 5/6 ("the" twice, once in the reference), 2-gram 3/5,
    3-gram 2/4, 4-gram 1/3. BLEU = 100 * (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25."""
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)
    assert bleu(["Ann, Bob."], ["Ann, Bob."]) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        bleu(["a"], [])


# -- ratings -----------------------------------------------------------------------------------------

def test_elo_all_ties_stay_at_base_and_winner_ranks_first():
    """A tie between equal ratings has expected score 0.5 = actual score: no rating ever moves."""
    ties = elo_ratings([("A", "B", 0.5)] * 50)
    assert ties["A"] == {"rating": 1000.0, "low": 1000.0, "high": 1000.0} == ties["B"]
    # A beats everyone, B beats C: strict order, with non-overlapping intervals
    matches = [("A", "B", 1.0), ("C", "A", 0.0), ("B", "C", 1.0)] * 100
    r = elo_ratings(matches)
    assert r["A"]["low"] > r["B"]["high"] and r["B"]["low"] > r["C"]["high"]
    assert all(r[m]["low"] <= r[m]["rating"] <= r[m]["high"] for m in r)
    assert elo_ratings(matches, seed=1) == elo_ratings(matches, seed=1)


def test_elo_symmetric_results_give_equal_ratings():
    """A and B each win half their games: Elo is zero-sum, so rating_A - 1000 = 1000 - rating_B in every
    replica; the medians agree to within a few points and both intervals contain 1000."""
    r = elo_ratings([("A", "B", 1.0), ("A", "B", 0.0)] * 100)
    assert r["A"]["rating"] + r["B"]["rating"] == pytest.approx(2000.0)
    assert abs(r["A"]["rating"] - r["B"]["rating"]) < 10
    assert r["A"]["low"] < 1000 < r["A"]["high"]


def test_bradley_terry_two_models_known_gap():
    """A wins 3 of 4 against B: the MLE has p_A / p_B = 3, so the gap is 400 log10(3) = 190.85; anchored
    at the mean, A = 1000 + 95.42 and B = 1000 - 95.42. Two wins and two ties give A 2 + 1 = 3 wins to
    B's 1 as well, so the same gap."""
    gap = 400 * math.log10(3)
    r = bradley_terry_ratings([("A", "B", 1.0)] * 3 + [("B", "A", 1.0)], prior=0.0)
    assert r["A"]["rating"] == pytest.approx(1000 + gap / 2, abs=1e-6)
    assert r["B"]["rating"] == pytest.approx(1000 - gap / 2, abs=1e-6)
    r = bradley_terry_ratings([("A", "B", 1.0)] * 2 + [("A", "B", 0.5)] * 2, prior=0.0, anchor="B")
    assert r["B"]["rating"] == 1000.0 and r["A"]["rating"] == pytest.approx(1000 + gap, abs=1e-6)


def test_bradley_terry_three_models_recovers_strengths():
    """Counts exactly proportional to strengths (1, 2, 4): B-A 2:1, C-B 2:1, C-A 4:1. These satisfy the
    likelihood equations W_i = sum_j n_ij p_i / (p_i + p_j) (A: 1 + 1 = 3/3 + 5/5), so the MLE is
    (1, 2, 4): ratings 1000 - 120.41, 1000, 1000 + 120.41 with the mean anchored at 1000."""
    m = ([("B", "A", 1.0)] * 2 + [("A", "B", 1.0)] + [("C", "B", 1.0)] * 2 + [("B", "C", 1.0)]
         + [("C", "A", 1.0)] * 4 + [("A", "C", 1.0)])
    r = bradley_terry_ratings(m, prior=0.0)
    step = 400 * math.log10(2)
    for name, want in (("A", 1000 - step), ("B", 1000.0), ("C", 1000 + step)):
        assert r[name]["rating"] == pytest.approx(want, abs=1e-6)


def test_bradley_terry_dominant_model_needs_the_prior():
    """A never loses: no finite MLE (prior=0 is an error); the default prior keeps it finite and first."""
    m = [("A", "B", 1.0), ("A", "C", 1.0)] * 10 + [("B", "C", 1.0), ("C", "B", 1.0)] * 10
    with pytest.raises(ValueError, match="prior"):
        bradley_terry_ratings(m, prior=0.0)
    r = bradley_terry_ratings(m)
    assert r["A"]["rating"] > r["B"]["rating"] and np.isfinite(r["A"]["rating"])
    assert abs(r["B"]["rating"] - r["C"]["rating"]) < 1e-6  # B and C split their games evenly
    assert r["A"]["low"] <= r["A"]["rating"] <= r["A"]["high"]


# ------------------------------------------------------------ multiplicity (Holm 1979)

def test_holm_adjusted_p_values_by_hand():
    """Four tests, p = a 0.01, b 0.04, c 0.03, d 0.005. Sorted: d 0.005, a 0.01, c 0.03, b 0.04; multipliers
    4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06. At alpha 0.05 d and a are
    rejected; unadjusted, all four were below 0.05 (and Bonferroni, 4p, rejects only d and a as well)."""
    from tinyrlhf.eval.metrics import holm_adjust
    adj = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adj == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06}, abs=1e-12)
    assert sorted(k for k, v in adj.items() if v <= 0.05) == ["a", "d"]
    assert holm_adjust({"x": 0.7, "y": 0.9}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm_adjust({"only": 0.03}) == {"only": 0.03}  # one test: no correction


def test_bootstrap_p_value_counts_the_far_side():
    """R = 9 draws with 2 at or below 0: p = 2 (1 + 2) / 10 = 0.6; a draw exactly 0 counts on both sides. With
    none on the far side the count's floor 2 / 10 = 0.2 gives way to the normal tail of the draws: 1..9 has
    mean 5 and sd sqrt(60/9), so p = 2 (1 - Phi(5 / 2.582)) = 0.0528."""
    import numpy as np
    from tinyrlhf.eval.metrics import bootstrap_p_value
    assert bootstrap_p_value(np.array([-1, -0.5, 1, 2, 3, 4, 5, 6, 7.0])) == pytest.approx(0.6)
    assert bootstrap_p_value(np.arange(1, 10.0)) == pytest.approx(0.05281, abs=1e-4)
    assert bootstrap_p_value(-np.arange(1, 10.0)) == pytest.approx(0.05281, abs=1e-4)
    assert bootstrap_p_value(np.array([0.0] * 9)) == 1.0


def test_a_clear_difference_stays_significant_after_holm_over_many_tests():
    """2,000 draws far from 0 (mean 0.4, sd 0.02): the count alone could say no less than p = 2/2001, and Holm
    over 66 tests would multiply that to 0.066 > 0.05; the normal tail keeps it significant."""
    import numpy as np
    from tinyrlhf.eval.metrics import bootstrap_p_value, holm_adjust
    draws = np.random.default_rng(0).normal(0.4, 0.02, size=2000)
    assert 2 / 2001 * 66 > 0.05
    adjusted = holm_adjust({f"t{i}": bootstrap_p_value(draws) for i in range(66)})
    assert all(v < 1e-6 for v in adjusted.values())


def test_cluster_draws_give_the_interval_and_p_agrees_with_it():
    import numpy as np
    from tinyrlhf.eval.metrics import bootstrap_p_value, cluster_bootstrap_ci, cluster_bootstrap_draws
    groups = [[0.3, 0.1, 0.2, 0.4] * 10, [0.2, 0.0, 0.1, 0.3] * 10]
    est, draws = cluster_bootstrap_draws(groups, seed=3)
    mean, low, high = cluster_bootstrap_ci(groups, seed=3)
    assert (est, low, high) == (mean, *np.quantile(draws, [0.025, 0.975]))
    assert low > 0 and bootstrap_p_value(draws) < 0.05
    centred = [[x - 0.2 for x in g] for g in groups]  # mean 0.0: the interval holds 0, p is large
    _, draws0 = cluster_bootstrap_draws(centred, seed=3)
    assert bootstrap_p_value(draws0) > 0.05


def test_ratings_cluster_bootstrap_resamples_judges():
    """Two judges who disagree completely (alice: A always wins, bob: B always wins, 100 votes each). Over
    matches the data are a 50:50 split and the bootstrap interval of the gap is narrow; resampling the judges
    (clusters) draws alice twice or bob twice in half the replicas, a unanimous verdict either way, so the
    interval must span most of the way to the all-wins ratings. With one judge the two-stage cluster
    bootstrap is the plain bootstrap of that judge's matches: same width to within the resampling noise."""
    matches = [("A", "B", 1.0)] * 100 + [("A", "B", 0.0)] * 100
    judges = ["alice"] * 100 + ["bob"] * 100
    for fn in (elo_ratings, bradley_terry_ratings):
        plain, clustered = fn(matches), fn(matches, clusters=judges)
        assert plain["A"]["rating"] == pytest.approx(clustered["A"]["rating"], abs=10)  # same point estimate
        width = lambda r: r["A"]["high"] - r["A"]["low"]  # noqa: E731
        assert width(clustered) > 5 * width(plain), (fn.__name__, width(plain), width(clustered))
        mixed = [("A", "B", float(i % 3 != 0)) for i in range(150)]
        one = fn(mixed, clusters=["solo"] * 150, seed=3)
        assert width(one) == pytest.approx(width(fn(mixed, seed=3)), rel=0.35)
        with pytest.raises(ValueError, match="cluster labels"):
            fn(matches, clusters=judges[:-1])
