"""Simulated annotators: noisy judgements drawn from the gold reward.

Every judgement is a draw from a standard choice model with a temperature tau (larger = noisier):
    pairwise   Bradley-Terry:  P(a preferred to b) = sigmoid((g_a - g_b) / tau)
    ranking    Plackett-Luce:  pick the best of the remaining with probability ∝ exp(g / tau), repeat
    binary     P(good) = sigmoid((g - threshold) / tau); `write_task_data` uses as threshold the median
               gold of the candidates it labels, so about half are desirable (as KTO expects)

A pool has several annotators with their own ids and noise levels tau_i = base_tau * m_i, the
multipliers m_i spread log-uniformly around 1. `calibrate_tau` picks base_tau so that the pool's
EXPECTED agreement with the gold ordering over a sample of pairs equals a target -- by default 0.73,
the inter-annotator agreement InstructGPT reports for its labelers (Ouyang et al. 2022, §5):
    agreement(base_tau) = mean over annotators i and pairs with g_a != g_b of sigmoid(|g_a - g_b| / tau_i)
It falls monotonically from 1 (tau -> 0) to 0.5 (tau -> inf), so bisection finds it.

Randomness: only the `random.Random` passed in (no numpy, no global RNG), so the same seed gives
byte-identical data in any process.
"""
from __future__ import annotations

import math
import random
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


def expected_agreement(gaps: Sequence[float], taus: Sequence[float]) -> float:
    """Expected share of pairs where an annotator drawn uniformly from `taus` prefers the gold-better
    completion; pairs with a zero gap are left out (there is no gold order to agree with)."""
    gaps = _nonzero_gaps(gaps)
    if not gaps:
        raise ConfigError("expected agreement needs at least one pair with a nonzero gold gap")
    return sum(sigmoid(g / t) for t in taus for g in gaps) / (len(gaps) * len(taus))


def calibrate_tau(gaps: Sequence[float], agreement: float = 0.73,
                  multipliers: Sequence[float] = (1.0,), iters: int = 100) -> float:
    """base_tau such that expected_agreement(gaps, [base_tau * m for m in multipliers]) == agreement."""
    if not 0.5 < agreement < 1.0:
        raise ConfigError(f"agreement must be in (0.5, 1), got {agreement}")
    nz = _nonzero_gaps(gaps)
    if not nz:
        raise ConfigError("cannot calibrate annotators: every pair has a zero gold gap")
    # Bracket in log-space: at lo every sigmoid is ~1, at hi every one is ~0.5.
    log_lo = math.log(min(nz) / max(multipliers) * 1e-3)
    log_hi = math.log(max(nz) / min(multipliers) * 1e4)
    for _ in range(iters):
        mid = (log_lo + log_hi) / 2
        tau = math.exp(mid)
        if expected_agreement(nz, [tau * m for m in multipliers]) > agreement:
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
        """Pool whose expected agreement with the gold order over `gaps` equals `agreement`."""
        base = calibrate_tau(gaps, agreement, cls.multipliers(max(1, n_annotators), spread, seed))
        return cls.make(base, n_annotators, spread, seed)

    def pick(self, rng: random.Random) -> Annotator:
        return self.annotators[rng.randrange(len(self.annotators))]

    def expected_agreement(self, gaps: Sequence[float]) -> float:
        return expected_agreement(gaps, [a.tau for a in self.annotators])
