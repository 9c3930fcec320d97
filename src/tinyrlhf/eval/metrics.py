"""Evaluation metrics as pure functions of numbers and strings (no models, no I/O).

Confidence intervals are percentile bootstraps of the mean: seeded, so the same inputs give the same
interval. Text metrics split on whitespace; ROUGE-L and BLEU come from maintained libraries
(`rouge-score`, `sacrebleu`), which need no downloaded data.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_MAX_DRAWS = 2_000_000  # indices drawn per chunk: keeps memory bounded for long value lists


def bootstrap_ci(values: Sequence[float], *, n_resamples: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and the percentile-bootstrap (1 - alpha) interval of the mean.

    Resamples the values with replacement `n_resamples` times from `np.random.default_rng(seed)`;
    low/high are the alpha/2 and 1 - alpha/2 quantiles of the resampled means. One value gives
    (v, v, v); no values is a ValueError."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci: values must be finite")
    rng = np.random.default_rng(seed)
    n = x.size
    chunk = max(1, _MAX_DRAWS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (R, n)
        means[start:stop] = x[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(low), float(high)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000,
                        alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(mean_diff, low, high) of mean(a - b) where a[i] and b[i] belong to the same prompt.

    Resampling prompts (not a and b separately) keeps the pairing, so the prompt-to-prompt spread
    that both share cancels: a method beats a baseline when `low > 0`."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired_bootstrap_ci: {a_arr.size} values vs {b_arr.size}; pairs need equal lengths")
    return bootstrap_ci(a_arr - b_arr, n_resamples=n_resamples, alpha=alpha, seed=seed)


def cluster_bootstrap_ci(groups: Sequence[Sequence[float]], *, n_resamples: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) for values nested in groups -- per-prompt numbers nested in training seeds.

    The estimate is the mean of the group means (every seed weighs the same). Each resample draws
    len(groups) groups with replacement and, inside every drawn group, its values with replacement (a
    two-stage cluster bootstrap, Davison & Hinkley 1997, sec. 3.8): the interval then holds the seed-to-seed
    spread as well as the prompt noise, which pooling all prompts as if independent leaves out. With one
    group it is the plain bootstrap of that group's mean; with few groups the seed stage is coarse (2 seeds
    give only 3 distinct seed draws), so the interval is honest about how little a few seeds can show."""
    estimate, draws = cluster_bootstrap_draws(groups, n_resamples=n_resamples, seed=seed)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)


def cluster_bootstrap_draws(groups: Sequence[Sequence[float]], *, n_resamples: int = 2000,
                            seed: int = 0) -> tuple[float, np.ndarray]:
    """(estimate, resampled estimates (n_resamples,)) of the two-stage cluster bootstrap (cluster_bootstrap_ci)."""
    xs = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    if not xs or any(x.size == 0 for x in xs):
        raise ValueError("cluster_bootstrap_ci: every group needs values")
    if not all(np.all(np.isfinite(x)) for x in xs):
        raise ValueError("cluster_bootstrap_ci: values must be finite")
    rng = np.random.default_rng(seed)
    n_groups = len(xs)
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))  # (R, G): which group fills each slot
    # slot_means[k, r, j]: group k's mean under an independent resample of its values, for slot j of draw r
    # (a group drawn twice in one resample gets two independent prompt resamples, as the two-stage scheme says)
    slot_means = np.empty((n_groups, n_resamples, n_groups))
    for k, x in enumerate(xs):
        chunk = max(1, _MAX_DRAWS // (x.size * n_groups))
        for start in range(0, n_resamples, chunk):
            stop = min(start + chunk, n_resamples)
            idx = rng.integers(0, x.size, size=(stop - start, n_groups, x.size))
            slot_means[k, start:stop] = x[idx].mean(axis=-1)
    draws = np.take_along_axis(slot_means.transpose(1, 2, 0), picks[..., None], axis=-1)[..., 0]  # (R, G)
    return float(np.mean([x.mean() for x in xs])), draws.mean(axis=1)




def bootstrap_p_value(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the mean is 0": twice the share of resampled means on the far side of 0,
    with the +1 of Davison & Hinkley (1997, eq. 4.11) so it is never 0; (1 + k) / (R + 1) per side, capped at 1.
    It agrees with the percentile interval: the 95 % interval excludes 0 about when p < 0.05.

    With no draw on the far side the count only says p < 2 / (R + 1), a floor that a correction for many tests
    turns into "nothing is significant" (Holm over 66 method pairs: 66 x 2 / 2001 > 0.05). There the tail beyond
    the draws is read from a normal fitted to them, 2 Phi(-|mean| / sd) (the bootstrap-normal test, Efron &
    Tibshirani 1993, sec. 16.4), and the smaller of the two is returned."""
    d = np.asarray(draws, dtype=np.float64).reshape(-1)
    side = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2 * (1 + side) / (d.size + 1))
    sd = float(d.std())
    if side == 0 and sd > 0:
        p = min(p, math.erfc(abs(float(d.mean())) / sd / math.sqrt(2)))  # = 2 (1 - Phi(|mean| / sd))
    return p


def holm_adjust(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979) of one family of tests: sorted ascending, the i-th of m
    (from 1) is min(1, (m - i + 1) p), made non-decreasing by a running maximum. Reject where adjusted <= alpha:
    the family-wise error rate stays <= alpha for any dependence between the tests, and every test rejected by
    Bonferroni (m p <= alpha) is rejected here too."""
    order = sorted(p_values, key=p_values.__getitem__)
    m, running, out = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        out[name] = running
    return out


def win_rate(judgments: Sequence[float], *, n_resamples: int = 2000, alpha: float = 0.05,
             seed: int = 0) -> tuple[float, float, float]:
    """(rate, low, high) from judgments 1 (win), 0.5 (tie), 0 (loss); ties count as half a win.

    The interval is a percentile bootstrap of the mean (not Wilson: ties make the outcome
    three-valued, which a binomial interval does not model)."""
    j = np.asarray(judgments, dtype=np.float64)
    if not np.all(np.isin(j, (0.0, 0.5, 1.0))):
        raise ValueError("win_rate: judgments must be 1 (win), 0.5 (tie) or 0 (loss)")
    return bootstrap_ci(j, n_resamples=n_resamples, alpha=alpha, seed=seed)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all texts (whitespace tokens; n-grams
    never span two texts). 0.0 when the texts hold no n-gram at all (empty list, or all shorter than n)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    total, unique = 0, set()
    for text in texts:
        toks = text.split()
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def mean_length(texts: Sequence[str]) -> dict[str, float]:
    """{"chars": mean characters, "words": mean whitespace tokens} per text. No texts is a ValueError."""
    if len(texts) == 0:
        raise ValueError("mean_length: no texts")
    return {"chars": sum(len(t) for t in texts) / len(texts),
            "words": sum(len(t.split()) for t in texts) / len(texts)}


def _check_pairs(name: str, predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions vs {len(references)} references")
    if len(predictions) == 0:
        raise ValueError(f"{name}: no predictions")


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus ROUGE-L on a 0-1 scale: the mean over pairs of the ROUGE-L F-measure (LCS-based
    precision/recall of tokens), computed by `rouge-score` with its default tokenizer (lowercase,
    alphanumeric tokens) and no stemming. One reference per prediction."""
    _check_pairs("rouge_l", predictions, references)
    from rouge_score import rouge_scorer  # imported here: pulls in nltk (slow import, no data needed)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    # score(target, prediction): the reference comes first in rouge-score's signature
    return float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU on a 0-100 scale from `sacrebleu.corpus_bleu` with its defaults (13a tokenizer,
    4-grams, exponential smoothing, brevity penalty over the corpus). One reference per prediction."""
    _check_pairs("bleu", predictions, references)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
