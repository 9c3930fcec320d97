"""Elo and Bradley-Terry ratings of several models from their pairwise judgments, with bootstrap CIs.

A match is `(model_a, model_b, score_a)` with score_a 1 (a won), 0.5 (tie) or 0 (b won). Both
functions return `{model: {"rating", "low", "high"}}` on the Elo scale: a gap of 400 points means
the stronger model wins 10 times in 11 (expected score 1 / (1 + 10**(-gap/400))).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Match = tuple[str, str, float]
_SCALE = 400.0  # Elo points per factor 10 in odds


def _encode(matches: Sequence[Match]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Model names (sorted) and index arrays a, b and scores s, (N,) each; checks the scores."""
    if len(matches) == 0:
        raise ValueError("ratings: no matches")
    models = sorted({m for a, b, _ in matches for m in (a, b)})
    pos = {m: i for i, m in enumerate(models)}
    a = np.array([pos[m[0]] for m in matches])
    b = np.array([pos[m[1]] for m in matches])
    s = np.array([float(m[2]) for m in matches])
    if np.any(a == b):
        raise ValueError("ratings: a model cannot play itself")
    if not np.all(np.isin(s, (0.0, 0.5, 1.0))):
        raise ValueError("ratings: score_a must be 1 (a won), 0.5 (tie) or 0 (b won)")
    return models, a, b, s


def _cluster_resamples(clusters: Sequence, n_bootstrap: int, rng: np.random.Generator,
                       min_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage cluster bootstrap of match indices (Davison & Hinkley 1997, sec. 3.8, as
    metrics.cluster_bootstrap_draws): each replica draws G clusters with replacement and, inside each drawn
    cluster, its matches with replacement, in a random order. Replicas differ in length, so they come as
    index and weight arrays (R, L), the weight 0 on padding. With one cluster it is the plain bootstrap."""
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rows = []
    for pick in rng.integers(0, len(groups), size=(n_bootstrap, len(groups))):  # (R, G)
        row = np.concatenate([rng.choice(groups[g], size=groups[g].size) for g in pick])
        rows.append(rng.permutation(row))
    width = max(min_len, max(r.size for r in rows))
    idx, weight = np.zeros((n_bootstrap, width), dtype=int), np.zeros((n_bootstrap, width))
    for r, row in enumerate(rows):
        idx[r, :row.size], weight[r, :row.size] = row, 1.0
    return idx, weight


def _check_clusters(clusters, n: int) -> None:
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"ratings: {len(clusters)} cluster labels for {n} matches")


def _summary(models: list[str], point: np.ndarray, boot: np.ndarray, alpha: float) -> dict:
    """point (M,), boot (R, M) -> {model: {"rating", "low", "high"}} with percentile bounds."""
    low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    return {m: {"rating": float(point[i]), "low": float(low[i]), "high": float(high[i])}
            for i, m in enumerate(models)}


def elo_ratings(matches: Sequence[Match], *, k: float = 4.0, base: float = 1000.0, n_bootstrap: int = 200,
                alpha: float = 0.05, seed: int = 0, clusters: Sequence | None = None) -> dict[str, dict[str, float]]:
    """Online Elo (every model starts at `base`, update k * (score - expected) after each match).

    Elo depends on the order of the matches, and the order of our judgments means nothing, so we run
    it on `n_bootstrap` resamples of the matches (drawn with replacement, in random order) and report
    the median as the rating and the alpha/2, 1 - alpha/2 quantiles as the interval (as Chatbot Arena
    does). The small default k suits hundreds of matches or more. `clusters` (one label per match, e.g.
    who judged it): resample the clusters, not the matches (_cluster_resamples), so that one judge's many
    votes, which share that judge's taste, widen the interval as they should."""
    models, a, b, s = _encode(matches)
    _check_clusters(clusters, len(s))
    rng = np.random.default_rng(seed)
    if clusters is None:
        order = rng.integers(0, len(s), size=(n_bootstrap, len(s)))  # (R, N): resample = random order too
        weight = np.ones(order.shape)
    else:
        order, weight = _cluster_resamples(clusters, n_bootstrap, rng)  # (R, L), 0 on padding
    ratings = np.full((n_bootstrap, len(models)), base)  # (R, M): all replicas advance in lockstep
    rows = np.arange(n_bootstrap)
    for t in range(order.shape[1]):
        ia, ib, sa = a[order[:, t]], b[order[:, t]], s[order[:, t]]
        expected_a = 1.0 / (1.0 + 10.0 ** ((ratings[rows, ib] - ratings[rows, ia]) / _SCALE))
        delta = k * (sa - expected_a) * weight[:, t]
        ratings[rows, ia] += delta
        ratings[rows, ib] -= delta
    return _summary(models, np.median(ratings, axis=0), ratings, alpha)


def _win_matrix(n_models: int, a: np.ndarray, b: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """(R, M, M) wins[r, i, j] of i over j from index arrays (R, N), each match weighted by w (R, N)
    (default 1); a tie is half a win each way."""
    reps = np.broadcast_to(np.arange(a.shape[0])[:, None], a.shape)
    w = np.ones(a.shape) if w is None else w
    wins = np.zeros((a.shape[0], n_models, n_models))
    np.add.at(wins, (reps, a, b), s * w)
    np.add.at(wins, (reps, b, a), (1.0 - s) * w)
    return wins


def _bt_loglik(wins: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(R,) log-likelihood sum_ij W_ij log sigmoid(theta_i - theta_j) of strengths theta (R, M)."""
    diff = theta[:, :, None] - theta[:, None, :]  # (R, M, M)
    return -(wins * np.logaddexp(0.0, -diff)).sum(axis=(1, 2))


def _bt_fit(wins: np.ndarray, tol: float = 1e-9, max_iter: int = 200) -> np.ndarray:
    """Bradley-Terry maximum likelihood, P(i beats j) = sigmoid(theta_i - theta_j), for each replica:
    Newton's method with step halving (the log-likelihood is concave, so this converges where MM
    crawls when one model dominates). wins (R, M, M) -> log10 strengths (R, M) with mean 0 per
    replica; NaN rows where no finite MLE exists (a model without a win or a loss, or no convergence)."""
    n_rep, m, _ = wins.shape
    games = wins + np.swapaxes(wins, 1, 2)  # (R, M, M) n_ij
    total_wins = wins.sum(axis=2)  # (R, M)
    ok = np.all(total_wins > 0, axis=1) & np.all(games.sum(axis=2) - total_wins > 0, axis=1)
    theta = np.zeros((n_rep, m))
    done = ~ok
    gauge = np.ones((m, m)) / m  # the likelihood ignores a common shift: pin it by adding 11^T/M
    for _ in range(max_iter):
        if done.all():
            break
        sig = 1.0 / (1.0 + np.exp(-(theta[:, :, None] - theta[:, None, :])))  # (R, M, M)
        grad = total_wins - (games * sig).sum(axis=2)  # (R, M)
        w = games * sig * (1.0 - sig)
        neg_hess = np.eye(m) * w.sum(axis=2)[:, :, None] - w + gauge + 1e-12 * np.eye(m)
        step = np.linalg.solve(neg_hess, grad[:, :, None])[:, :, 0]
        step[done] = 0.0
        base_ll, t = _bt_loglik(wins, theta), np.ones(n_rep)
        for _ in range(50):  # halve the step of each replica until its likelihood does not drop
            cand = theta + t[:, None] * step
            bad = _bt_loglik(wins, cand) < base_ll - 1e-12 * np.abs(base_ll)
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        theta = cand - cand.mean(axis=1, keepdims=True)
        done |= np.max(np.abs(t[:, None] * step), axis=1) < tol
    out = theta / np.log(10.0)
    out[~(ok & done)] = np.nan
    return out


def bradley_terry_ratings(matches: Sequence[Match], *, base: float = 1000.0, anchor: str | None = None,
                          prior: float = 0.1, n_bootstrap: int = 200, alpha: float = 0.05,
                          seed: int = 0, clusters: Sequence | None = None) -> dict[str, dict[str, float]]:
    """Bradley-Terry ratings by maximum likelihood, P(i beats j) = p_i / (p_i + p_j), reported as
    base + 400 * log10(p_i), shifted so that the `anchor` model (or, without one, the mean over
    models) sits at `base`. Ties count as half a win for each side.

    `prior` adds that many virtual tied games between every pair of models: it keeps the estimate
    finite when a model wins (or loses) every game and ties together models that never met, at the
    cost of a slight pull towards equal ratings. prior=0 is the plain MLE (a ValueError when it does
    not exist). The interval is the percentile bootstrap over resampled matches (bootstrap replicas
    without an MLE are dropped); with `clusters` (one label per match) the clusters are resampled
    instead (elo_ratings)."""
    models, a, b, s = _encode(matches)
    _check_clusters(clusters, len(s))
    if anchor is not None and anchor not in models:
        raise ValueError(f"bradley_terry_ratings: anchor {anchor!r} is not among the models {models}")
    m = len(models)
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = np.concatenate([np.arange(len(s))[None], rng.integers(0, len(s), size=(n_bootstrap, len(s)))])
        weight = np.ones(idx.shape)
    else:
        boot, boot_w = _cluster_resamples(clusters, n_bootstrap, rng, min_len=len(s))
        data = np.zeros((1, boot.shape[1]), dtype=int)
        data[0, :len(s)] = np.arange(len(s))
        idx = np.concatenate([data, boot])
        weight = np.concatenate([(np.arange(boot.shape[1]) < len(s))[None].astype(float), boot_w])
    wins = _win_matrix(m, a[idx], b[idx], s[idx], weight)  # (1 + R, M, M): row 0 is the data itself
    wins += (prior / 2) * (1.0 - np.eye(m))
    log10_p = _bt_fit(wins)
    if np.isnan(log10_p[0]).any():
        raise ValueError("bradley_terry_ratings: no maximum-likelihood estimate (a model won or lost "
                         "every game); use prior > 0")
    shift = log10_p[:, [models.index(anchor)]] if anchor is not None else log10_p.mean(axis=1, keepdims=True)
    ratings = base + _SCALE * (log10_p - shift)
    return _summary(models, ratings[0], ratings[1:], alpha)


def _length_feature(lengths: Sequence[tuple[float, float]], n: int) -> tuple[np.ndarray, float]:
    """Chatbot Arena's style covariate: the normalised length difference (len_a - len_b) / (len_a + len_b)
    of each match (0 when both are empty), divided by its standard deviation over the matches (1 if 0)."""
    if len(lengths) != n:
        raise ValueError(f"length_controlled_ratings: {len(lengths)} length pairs for {n} matches")
    la, lb = np.asarray(lengths, dtype=float).reshape(n, 2).T
    if np.any(la < 0) or np.any(lb < 0):
        raise ValueError("length_controlled_ratings: lengths must be >= 0")
    tot = la + lb
    z = np.divide(la - lb, tot, out=np.zeros(n), where=tot > 0)
    sd = float(z.std())
    return (z / sd if sd > 0 else z), sd


def _lc_fit(a: np.ndarray, b: np.ndarray, s: np.ndarray, z: np.ndarray, w: np.ndarray, m: int,
            ridge: float = 1e-6, tol: float = 1e-9, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Bradley-Terry with a covariate, P(a beats b) = sigmoid(theta_a - theta_b + gamma z), by weighted maximum
    likelihood for each replica (w (R, N): how often each match is drawn; ties are s = 0.5). Newton with step
    halving as _bt_fit; the matches enter only through BLAS products with their pair one-hots, so a replica
    costs O(N x pairs). Returns theta (R, M) in log10 units with mean 0 and gamma (R,) in natural log-odds;
    NaN where Newton did not converge. `ridge` keeps gamma finite when length alone separates the outcomes."""
    n_rep = w.shape[0]
    pair_ids = {p: k for k, p in enumerate(sorted({(int(x), int(y)) for x, y in zip(a, b)}))}
    pairs = np.array(list(pair_ids))  # (K, 2)
    onehot = np.zeros((len(a), len(pairs)))  # (N, K)
    onehot[np.arange(len(a)), [pair_ids[(int(x), int(y))] for x, y in zip(a, b)]] = 1.0
    incidence = np.zeros((len(a), m))  # (N, M): +1 for a, -1 for b
    incidence[np.arange(len(a)), a] += 1.0
    incidence[np.arange(len(a)), b] -= 1.0
    theta, gamma = np.zeros((n_rep, m)), np.zeros(n_rep)
    gauge = np.zeros((m + 1, m + 1))
    gauge[:m, :m] = 1.0 / m  # the likelihood ignores a common shift of theta: pin it as _bt_fit does

    def loglik(th, ga):
        d = th @ incidence.T + ga[:, None] * z  # (R, N)
        return -(w * (s * np.logaddexp(0.0, -d) + (1 - s) * np.logaddexp(0.0, d))).sum(axis=1) - ridge * ga**2

    done = np.zeros(n_rep, dtype=bool)
    for _ in range(max_iter):
        if done.all():
            break
        d = theta @ incidence.T + gamma[:, None] * z
        p = 1.0 / (1.0 + np.exp(-d))
        resid, h = w * (s - p), w * p * (1.0 - p)  # (R, N)
        grad = np.concatenate([resid @ incidence, (resid @ z - 2 * ridge * gamma)[:, None]], axis=1)  # (R, M+1)
        hp, hz, hzz = h @ onehot, (h * z) @ onehot, (h * z * z).sum(axis=1)  # (R, K), (R, K), (R,)
        neg_hess = np.zeros((n_rep, m + 1, m + 1))
        for k, (i, j) in enumerate(pairs):
            neg_hess[:, i, i] += hp[:, k]
            neg_hess[:, j, j] += hp[:, k]
            neg_hess[:, i, j] -= hp[:, k]
            neg_hess[:, j, i] -= hp[:, k]
            neg_hess[:, i, m] += hz[:, k]
            neg_hess[:, j, m] -= hz[:, k]
        neg_hess[:, m, :m] = neg_hess[:, :m, m]
        neg_hess[:, m, m] = hzz + 2 * ridge
        step = np.linalg.solve(neg_hess + gauge + 1e-12 * np.eye(m + 1), grad[:, :, None])[:, :, 0]
        step[done] = 0.0
        base_ll, t = loglik(theta, gamma), np.ones(n_rep)
        for _ in range(50):
            th, ga = theta + t[:, None] * step[:, :m], gamma + t * step[:, m]
            bad = loglik(th, ga) < base_ll - 1e-12 * np.abs(base_ll)
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        theta, gamma = th - th.mean(axis=1, keepdims=True), ga
        done |= np.max(np.abs(t[:, None] * step), axis=1) < tol
    theta = theta / np.log(10.0)
    theta[~done], gamma = np.nan, np.where(done, gamma, np.nan)
    return theta, gamma


def length_controlled_ratings(matches: Sequence[Match], lengths: Sequence[tuple[float, float]], *,
                              base: float = 1000.0, anchor: str | None = None, prior: float = 0.1,
                              n_bootstrap: int = 200, alpha: float = 0.05, seed: int = 0,
                              clusters: Sequence | None = None) -> dict:
    """Bradley-Terry ratings with length held fixed, as Chatbot Arena's style control (2024): the length of
    each side enters the BT regression as a covariate, logit P(a beats b) = theta_a - theta_b + gamma z with z
    the normalised length difference (_length_feature), so a model that wins by writing longer loses the part
    of its rating that length explains. `lengths`: (len_a, len_b) per match (words, tokens, any unit).

    Returns {"ratings": {model: {"rating", "low", "high"}} on bradley_terry_ratings' scale (same `base`,
    `anchor`, `prior`: the virtual tied games have z = 0), "length": {"coef", "low", "high"} = gamma, the change
    in log-odds of winning per standard deviation of z (> 0: the judge prefers the longer answer), and
    "length_sd": that standard deviation}. Intervals: the same (cluster) bootstrap as bradley_terry_ratings."""
    models, a, b, s = _encode(matches)
    _check_clusters(clusters, len(s))
    z, sd = _length_feature(lengths, len(s))
    if anchor is not None and anchor not in models:
        raise ValueError(f"length_controlled_ratings: anchor {anchor!r} is not among the models {models}")
    m, n = len(models), len(s)
    rng = np.random.default_rng(seed)
    if clusters is None:
        draws = rng.integers(0, n, size=(n_bootstrap, n))
        w = np.concatenate([np.ones((1, n)), np.stack([np.bincount(r, minlength=n) for r in draws])])
    else:
        idx, weight = _cluster_resamples(clusters, n_bootstrap, rng)
        w = np.concatenate([np.ones((1, n)), np.stack([np.bincount(i, weights=wt, minlength=n)
                                                       for i, wt in zip(idx, weight)])])
    if prior > 0:  # `prior` virtual tied games between every pair, at equal length
        va, vb = np.triu_indices(m, k=1)
        a, b = np.concatenate([a, va]), np.concatenate([b, vb])
        s, z = np.concatenate([s, np.full(va.size, 0.5)]), np.concatenate([z, np.zeros(va.size)])
        w = np.concatenate([w, np.full((w.shape[0], va.size), prior)], axis=1)
    log10_p, gamma = _lc_fit(a, b, s, z, w, m)
    if np.isnan(log10_p[0]).any():
        raise ValueError("length_controlled_ratings: no maximum-likelihood estimate (a model won or lost "
                         "every game); use prior > 0")
    shift = log10_p[:, [models.index(anchor)]] if anchor is not None else log10_p.mean(axis=1, keepdims=True)
    ratings = base + _SCALE * (log10_p - shift)
    g_low, g_high = np.nanquantile(gamma[1:], [alpha / 2, 1 - alpha / 2])
    return {"ratings": _summary(models, ratings[0], ratings[1:], alpha),
            "length": {"coef": float(gamma[0]), "low": float(g_low), "high": float(g_high)}, "length_sd": sd}
