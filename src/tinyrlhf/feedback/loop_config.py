"""The settings of `tinyrlhf loop` (configs/TASK/loop.yaml, overridden with `loop.key=value`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config_load import check_range


@dataclass(frozen=True)
class LoopConfig:
    labels_per_round: int = 400
    """Preference pairs labelled per round (simulated: drawn by the annotators; human: items queued)."""
    human_labels: int = 0
    """With --labels human: labels to wait for per round before training (0 = labels_per_round)."""
    policy_steps: int = 40
    """Policy training steps per round (rollout batches for online methods, optimizer steps for DPO)."""
    mix_earlier: float = 0.5
    """Share of a round's pairs whose second sample comes from an earlier round's policy (SFT included),
    drawn uniformly; the rest compare two samples of the current policy. Round 1 has only SFT."""
    refresh_rm: bool = True
    """true: retrain the reward model each round on all labels so far (iterated RLHF, Bai et al. 2022);
    false (--static-rm): one reward model trained once on all rounds' labels, drawn from the SFT model."""
    max_new_tokens: int = 40
    """Longest sampled answer (labelled pairs and the evaluation)."""
    temperature: float = 1.0
    """Sampling temperature of the labelled pairs."""
    eval_prompts: int = 200
    """Held-out prompts of each round's evaluation (gold with CI, proxy, KL to SFT, Elo)."""
    poll_s: float = 5.0
    """With --labels human: seconds between two looks at the feedback database."""
    wait_s: float = 0.0
    """With --labels human: give up after this many seconds without enough labels (0 = wait for ever);
    the round resumes where it was when the command runs again."""

    def __post_init__(self):
        for name in ("labels_per_round", "policy_steps", "max_new_tokens", "eval_prompts"):
            check_range(self, name, 1)
        check_range(self, "human_labels", 0)
        check_range(self, "mix_earlier", 0, 1)
        check_range(self, "temperature", 0, lo_open=True)
        check_range(self, "poll_s", 0, lo_open=True)
        check_range(self, "wait_s", 0)
