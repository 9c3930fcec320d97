"""What every built-in task provides. Tasks are plain classes that satisfy `Task` (no base class needed).

A task has a known *gold* reward. Training never sees it except through simulated annotators
(pairwise / ranking / binary labels with human-like noise); evaluation uses it directly.
"""
from __future__ import annotations

import hashlib
import random
from typing import Protocol, runtime_checkable

from ..errors import ConfigError

SPLITS = ("train", "val", "eval")
"""train: SFT demonstrations, annotated data, RL prompts. val: hyper-parameter selection. eval: the
numbers reported. A prompt's split is a function of its text alone (`split_of`), so the three are
disjoint for every seed."""


def split_of(prompt: str) -> str:
    """The split a prompt text belongs to: half train, a quarter val, a quarter eval (first byte of its
    SHA-256). Why train keeps exactly the old 'even byte' half: the training data (and models trained
    on it) did not change when val was carved out of the other half."""
    byte = hashlib.sha256(prompt.encode()).digest()[0]
    return "train" if byte % 2 == 0 else ("eval" if byte % 4 == 1 else "val")


def check_split(task: str, split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"{task}: split must be one of {', '.join(SPLITS)}, got '{split}'")


@runtime_checkable
class Task(Protocol):
    name: str
    """Registry name, e.g. 'family_tree'."""
    max_gold: float
    """The highest gold reward any completion can get (for 'far below the maximum' checks and plots)."""

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` prompts of `split` ('train', 'val' or 'eval'); the splits are disjoint for every pair of
        seeds; same (split, n, seed) -> same list, and prompts(s, n, seed) is a prefix of a longer list."""

    def gold_reward(self, prompt: str, completion: str) -> float:
        """Gold reward of `completion` for `prompt`. Works on any prompt this task produced, in any
        process (it parses the prompt or regenerates its hidden state; no global cache)."""

    def reference_answer(self, prompt: str) -> str | None:
        """A best completion (max gold) if the task has one, else None (for ROUGE/BLEU in eval)."""

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        """One deliberately imperfect demonstration for SFT."""

    def candidates(self, prompt: str, k: int, rng: random.Random) -> list[str]:
        """`k` distinct completions of varied quality (to be judged by annotators)."""

    def corpus(self, n: int, seed: int) -> list[str]:
        """Texts (prompt + completion) to train a tokenizer on."""
