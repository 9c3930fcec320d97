"""What every built-in task provides. Tasks are plain classes that satisfy `Task` (no base class needed).

A task has a known *gold* reward. Training never sees it except through simulated annotators
(pairwise / ranking / binary labels with human-like noise); evaluation uses it directly.
"""
from __future__ import annotations

import random
from typing import Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    name: str
    """Registry name, e.g. 'family_tree'."""
    max_gold: float
    """The highest gold reward any completion can get (for 'far below the maximum' checks and plots)."""

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` prompts of `split` ('train' or 'eval'); disjoint between splits for the same seed;
        same (split, n, seed) -> same list."""

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
