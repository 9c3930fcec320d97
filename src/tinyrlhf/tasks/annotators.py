"""Simulated annotators: noisy judgements drawn from the gold reward.

Every judgement is a draw from a standard choice model with a temperature tau (larger = noisier):
    pairwise   Bradley-Terry:  P(a preferred to b) = sigmoid((g_a - g_b) / tau)
    ranking    Plackett-Luce:  pick the best of the remaining with probability ∝ exp(g / tau), repeat
    binary     P(good) = sigmoid((g - threshold) / tau); `write_task_data` uses as threshold the median
               gold of the candidates it labels, so about half are desirable (as KTO expects)

A pool has several annotators with their own ids and noise levels tau_i = base_tau * m_i, the
multipliers m_i spread log-uniformly around 1. `calibrate_tau` picks base_tau so that TWO DISTINCT
annotators of the pool, drawn uniformly, labelling the same pair agree with each other a target share
of the time in expectation -- by default 0.73, the inter-annotator agreement InstructGPT reports for its
labelers (Ouyang et al. 2022, §5.1: 72.6 +- 1.5 %). With p_i = sigmoid(|g_a - g_b| / tau_i), the chance
that annotator i prefers the gold-better completion:
    inter_agreement(base_tau) = mean over pairs with g_a != g_b and ordered annotators i != j of
                                p_i p_j + (1 - p_i)(1 - p_j)
    agreement with gold       = mean over pairs with g_a != g_b and annotators i of p_i
Each p_i falls from 1 (tau -> 0) to 1/2 (tau -> inf) and p_i p_j + (1 - p_i)(1 - p_j) grows with both
p_i and p_j (when both are >= 1/2), so the inter-annotator agreement falls monotonically from 1 to 1/2
and bisection finds it. At 0.73 between annotators, each agrees with gold 81-82 % of the time on the
built-in tasks (if every pair had the same p: p^2 + (1 - p)^2 = 0.73 gives p = 0.84); calibrating the
agreement WITH GOLD to 0.73 instead (as this module did before) left two annotators agreeing only ~63 %. Pairs with a zero gold gap are left out
of both numbers (no gold order to agree with; two annotators agree on them half the time).

Randomness: only the `random.Random` passed in (no numpy, no global RNG), so the same seed gives
byte-identical data in any process.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # avoids overflow of exp(-x) for very negative x
    return e / (1.0 + e)


@dataclass(frozen=True)
class Annotator:
    id: str
    tau: float
    """Noise temperature: 0 < tau; small = nearly always agrees with the gold order."""

    def prefers_first(self, gold_a: float, gold_b: float, rng: random.Random) -> bool:
        """Bradley-Terry draw: True if completion a is preferred to b."""
        return rng.random() < sigmoid((gold_a - gold_b) / self.tau)

    def rank(self, golds: Sequence[float], rng: random.Random) -> list[int]:
        """Plackett-Luce draw: indices into `golds`, best first."""
        remaining = list(range(len(golds)))
        order = []
        while remaining:
            top = max(golds[j] for j in remaining)
            # Subtracting the max keeps exp() finite; with a tiny tau the others underflow to 0,
            # so the draw is the gold argmax (ties stay a fair draw).
            weights = [math.exp((golds[j] - top) / self.tau) for j in remaining]
            u = rng.random() * sum(weights)
            pick = len(remaining) - 1
            for pos, w in enumerate(weights):
                u -= w
                if u < 0:
                    pick = pos
                    break
            order.append(remaining.pop(pick))
        return order

    def is_good(self, gold: float, threshold: float, rng: random.Random) -> bool:
        """Binary (KTO-style) label: True = desirable."""
        return rng.random() < sigmoid((gold - threshold) / self.tau)


def _nonzero_gaps(gaps: Sequence[float]) -> list[float]:
    return [abs(g) for g in gaps if g != 0]


def _gap_counts(gaps: Sequence[float], what: str) -> list[tuple[float, int]]:
    """(|gap|, how often) for the nonzero gaps, sorted: scripted tasks repeat few gap values, so the
    bisection below evaluates each once (and the sum order never depends on the input order)."""
    counts = Counter(_nonzero_gaps(gaps))
    if not counts:
        raise ConfigError(f"{what} needs at least one pair with a nonzero gold gap")
    return sorted(counts.items())


def expected_agreement(gaps: Sequence[float], taus: Sequence[float]) -> float:
    """Expected share of pairs where an annotator drawn uniformly from `taus` prefers the gold-better
    completion; pairs with a zero gap are left out (there is no gold order to agree with)."""
    counts = _gap_counts(gaps, "expected agreement")
    total = sum(n for _, n in counts)
    return sum(n * sigmoid(g / t) for g, n in counts for t in taus) / (total * len(taus))


def expected_inter_agreement(gaps: Sequence[float], taus: Sequence[float]) -> float:
    """Expected share of pairs on which two distinct annotators drawn uniformly from `taus` give the same
    label (a one-annotator pool: two independent draws of it); zero-gap pairs are left out."""
    return _inter(_gap_counts(gaps, "expected inter-annotator agreement"), taus)


def _inter(counts: list[tuple[float, int]], taus: Sequence[float]) -> float:
    total, k = sum(n for _, n in counts), len(taus)
    acc = 0.0
    for g, n in counts:
        ps = [sigmoid(g / t) for t in taus]
        if k == 1:
            acc += n * (ps[0] ** 2 + (1 - ps[0]) ** 2)
            continue
        s = sum(ps)
        # sum over i != j of p_i p_j + (1 - p_i)(1 - p_j) = (s^2 - sum p^2) + ((k - s)^2 - sum (1 - p)^2)
        same = (s * s - sum(p * p for p in ps)) + ((k - s) ** 2 - sum((1 - p) ** 2 for p in ps))
        acc += n * same / (k * (k - 1))
    return acc / total


def calibrate_tau(gaps: Sequence[float], agreement: float = 0.73,
                  multipliers: Sequence[float] = (1.0,), iters: int = 100) -> float:
    """base_tau such that expected_inter_agreement(gaps, [base_tau * m for m in multipliers]) == agreement
    (the agreement between two distinct annotators, not with gold)."""
    if not 0.5 < agreement < 1.0:
        raise ConfigError(f"agreement must be in (0.5, 1), got {agreement}")
    counts = _gap_counts(gaps, "calibrating annotators")
    # Bracket in log-space: at lo every sigmoid is ~1, at hi every one is ~0.5.
    log_lo = math.log(counts[0][0] / max(multipliers) * 1e-3)
    log_hi = math.log(counts[-1][0] / min(multipliers) * 1e4)
    for _ in range(iters):
        mid = (log_lo + log_hi) / 2
        if _inter(counts, [math.exp(mid) * m for m in multipliers]) > agreement:
            log_lo = mid  # still too accurate: more noise
        else:
            log_hi = mid
    return math.exp((log_lo + log_hi) / 2)


def measured_agreement(gold_pairs: Sequence[tuple[float, float]]) -> float:
    """Share of (gold_chosen, gold_rejected) pairs with a nonzero gap where chosen is gold-better."""
    nz = [(c, r) for c, r in gold_pairs if c != r]
    if not nz:
        raise ConfigError("measured agreement needs at least one pair with a nonzero gold gap")
    return sum(c > r for c, r in nz) / len(nz)


@dataclass(frozen=True)
class AnnotatorPool:
    annotators: tuple[Annotator, ...]
    base_tau: float

    @classmethod
    def make(cls, base_tau: float, n_annotators: int = 8, spread: float = 0.5,
             seed: int = 0) -> "AnnotatorPool":
        """Pool with tau_i = base_tau * exp(spread * u_i), u_i uniform in [-1, 1] (from `seed`)."""
        if n_annotators < 1 or base_tau <= 0 or spread < 0:
            raise ConfigError(f"bad annotator pool: n_annotators={n_annotators}, base_tau={base_tau}, "
                              f"spread={spread}")
        mults = cls.multipliers(n_annotators, spread, seed)
        return cls(tuple(Annotator(f"ann{i:02d}", base_tau * m) for i, m in enumerate(mults)), base_tau)

    @staticmethod
    def multipliers(n_annotators: int, spread: float, seed: int) -> list[float]:
        rng = random.Random(f"annotators:{seed}")
        return [math.exp(spread * (2 * rng.random() - 1)) for _ in range(n_annotators)]

    @classmethod
    def calibrated(cls, gaps: Sequence[float], agreement: float = 0.73, n_annotators: int = 8,
                   spread: float = 0.5, seed: int = 0) -> "AnnotatorPool":
        """Pool whose expected inter-annotator agreement over `gaps` equals `agreement`."""
        base = calibrate_tau(gaps, agreement, cls.multipliers(max(1, n_annotators), spread, seed))
        return cls.make(base, n_annotators, spread, seed)

    def pick(self, rng: random.Random) -> Annotator:
        return self.annotators[rng.randrange(len(self.annotators))]

    def pick_other(self, first: Annotator, rng: random.Random) -> Annotator:
        """A second annotator, uniform over the pool without `first` (`first` itself in a pool of one)."""
        others = [a for a in self.annotators if a.id != first.id] or [first]
        return others[rng.randrange(len(others))]

    def expected_agreement(self, gaps: Sequence[float]) -> float:
        """With the gold order."""
        return expected_agreement(gaps, [a.tau for a in self.annotators])

    def expected_inter_agreement(self, gaps: Sequence[float]) -> float:
        """Between two distinct annotators."""
        return expected_inter_agreement(gaps, [a.tau for a in self.annotators])


def measured_inter_agreement(pool: AnnotatorPool, judged: Sequence[tuple[Annotator, float, float]],
                             rng: random.Random) -> float:
    """Share of (first annotator, gold_chosen, gold_rejected) pairs with a nonzero gap on which a second,
    distinct annotator (drawn with `rng`, which nothing else uses) also prefers the chosen completion."""
    nz = [(ann, c, r) for ann, c, r in judged if c != r]
    if not nz:
        raise ConfigError("measured inter-annotator agreement needs a pair with a nonzero gold gap")
    return sum(pool.pick_other(ann, rng).prefers_first(c, r, rng) for ann, c, r in nz) / len(nz)
