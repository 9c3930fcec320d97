"""Length-controlled Bradley-Terry (eval/ratings.py length_controlled_ratings): Chatbot Arena-style control
for length, checked against plain BT, against the score equations of its own likelihood, and on data drawn
from the model it fits."""
import numpy as np
import pytest

from tinyrlhf.eval.ratings import bradley_terry_ratings, length_controlled_ratings


def _games(rng, n, models=("a", "b", "c")):
    out = []
    for _ in range(n):
        i, j = rng.choice(len(models), size=2, replace=False)
        out.append((models[i], models[j], float(rng.choice([0.0, 0.5, 1.0]))))
    return out


def test_equal_lengths_give_plain_bradley_terry_exactly():
    """With every pair of answers equally long the covariate is 0 on every match, so the fit is plain BT:
    same point ratings and, with the same seed (same bootstrap draws), the same intervals."""
    matches = _games(np.random.default_rng(0), 300)
    plain = bradley_terry_ratings(matches, anchor="a", n_bootstrap=50, seed=3)
    lc = length_controlled_ratings(matches, [(7, 7)] * len(matches), anchor="a", n_bootstrap=50, seed=3)
    for m in plain:
        for k in ("rating", "low", "high"):
            assert lc["ratings"][m][k] == pytest.approx(plain[m][k], abs=1e-6)
    assert lc["length"]["coef"] == pytest.approx(0.0, abs=1e-9)


def test_fit_solves_its_score_equations():
    """At the maximum the gradient of sum_n [s log sig(d) + (1-s) log sig(-d)] is zero: for each model
    sum_n (s_n - p_n) (1[a_n = i] - 1[b_n = i]) = 0 and sum_n (s_n - p_n) z_n = 0 (prior=0, no ridge
    worth mentioning), with d_n = ln10 (theta_a - theta_b) + gamma z_n recomputed here from the ratings."""
    rng = np.random.default_rng(1)
    matches = _games(rng, 400)
    lengths = [(int(x), int(y)) for x, y in rng.integers(1, 40, size=(400, 2))]
    out = length_controlled_ratings(matches, lengths, prior=0.0, n_bootstrap=5)
    theta = {m: (r["rating"] - 1000.0) / 400.0 * np.log(10.0) for m, r in out["ratings"].items()}
    la, lb = np.array(lengths, dtype=float).T
    z = (la - lb) / (la + lb)
    z = z / z.std()
    d = np.array([theta[x] - theta[y] for x, y, _ in matches]) + out["length"]["coef"] * z
    s = np.array([g[2] for g in matches])
    resid = s - 1 / (1 + np.exp(-d))
    for m in theta:
        sign = np.array([(x == m) - (y == m) for x, y, _ in matches], dtype=float)
        assert abs((resid * sign).sum()) < 1e-6
    assert abs((resid * z).sum()) < 1e-4  # the ridge 1e-6 * 2 gamma is all that is left


def test_a_model_that_wins_by_length_loses_its_lead():
    """Two equally good models; "long" answers longer and the judge prefers length (gamma = 1 per sd).
    Plain BT puts "long" far ahead; the length-controlled rating recovers equal strength (|gap| within its
    95% interval of 0) and a positive length coefficient near the true 1."""
    rng = np.random.default_rng(2)
    matches, lengths = [], []
    for _ in range(3000):
        la, lb = rng.integers(20, 60), rng.integers(5, 30)  # "long" is a, "short" is b
        z = (la - lb) / (la + lb)
        matches.append(("long", "short", float(rng.random() < 1 / (1 + np.exp(-z / 0.2)))))
        lengths.append((la, lb))
    plain = bradley_terry_ratings(matches, anchor="short", n_bootstrap=100)
    lc = length_controlled_ratings(matches, lengths, anchor="short", n_bootstrap=100)
    assert plain["long"]["low"] > 1100  # length alone makes "long" look much stronger
    r = lc["ratings"]["long"]
    assert r["low"] < 1000 < r["high"] and abs(r["rating"] - 1000) < 40
    sd = lc["length_sd"]
    assert lc["length"]["low"] > 0 and lc["length"]["coef"] == pytest.approx(sd / 0.2, rel=0.2)


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="2 length pairs for 3 matches"):
        length_controlled_ratings([("a", "b", 1.0)] * 3, [(1, 2)] * 2)
    with pytest.raises(ValueError, match=">= 0"):
        length_controlled_ratings([("a", "b", 1.0)], [(-1, 2)])
