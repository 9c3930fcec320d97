"""Configs of the online-RL loops (PPO, RLOO/GRPO, online DPO); see config.py for loading and overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import RunConfig


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 32
    """Prompts sampled per iteration (the rollout batch; RLOO/GRPO draw `k` completions for each)."""
    max_new_tokens: int = 24
    """Longest response."""
    max_prompt_tokens: int = 168
    """Longer prompts keep their end (the project's truncation policy)."""
    temperature: float = 1.0
    """Sampling temperature; the trainer recomputes log-probs at the same temperature
    (lm-human-preference-details)."""
    top_k: int = 0
    """Sample among the k likeliest tokens (0 = off). Makes the update slightly off-policy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off). Makes the update slightly off-policy."""
    stop_token: str = ""
    """Truncate each response after the first occurrence of this token (must be one token), counted as ended."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that never ends (no EOS, no stop token) within max_new_tokens."""


@dataclass(frozen=True)
class KLConfig:
    coef: float = 0.05
    """Initial (adaptive) or fixed beta of the KL penalty to the reference (the SFT model)."""
    estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator: k1 = log pi - log ref (unbiased), k3 = (r - 1) - log r (unbiased, >= 0)."""
    adaptive: bool = True
    """Adapt beta towards `target` (Ziegler et al. 2019, eq. 2); false = fixed beta."""
    target: float = 2.0
    """Target KL to the reference per response (nats) for the adaptive controller."""
    horizon: int = 10000
    """Episodes over which the adaptive controller moves beta by up to 20 % per unit of error."""


@dataclass(frozen=True)
class PPOHyper:
    epochs: int = 4
    """Passes over each rollout batch."""
    minibatch_size: int = 8
    """Episodes per optimizer step (processed in micro-batches of train.batch_size)."""
    clip: float = 0.2
    """Policy ratio clip epsilon."""
    value_clip: float = 0.2
    """Value clip epsilon (around the rollout's values)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards of each batch (mean kept), as in lm-human-preferences."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch before the PPO epochs."""
    early_stop_kl: float = 0.0
    """Stop a batch's PPO epochs once the approximate KL to the rollout policy exceeds this (0 = off)."""
    value_model: Literal["shared", "separate"] = "shared"
    """shared: a value head on the policy's trunk (one backbone); separate: its own critic network."""
    value_init: str = ""
    """Separate critic's starting weights: a model dir; empty = the reward model's trunk when the reward
    is a reward model (InstructGPT), else the policy's starting weights."""


@dataclass(frozen=True)
class PPOConfig(RunConfig):
    out_dir: str = "runs/ppo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    reward: str = ""
    """Reward source: a reward run dir (or its final/), 'gold' (the task's gold reward: an oracle upper
    bound) or 'package.module:function' called as f(prompts, completions) -> list of floats."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    ppo: PPOHyper = field(default_factory=PPOHyper)


@dataclass(frozen=True)
class GroupConfig(RunConfig):
    out_dir: str = "runs/rloo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    algo: Literal["rloo", "grpo"] = "rloo"
    """Advantage: rloo (leave-one-out baseline) or grpo (group mean/std normalised)."""
    reward: str = ""
    """Reward source: a reward run dir (or its final/), 'gold', or 'package.module:function'."""
    k: int = 4
    """Samples per prompt."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where the KL to the reference goes: subtracted from the sequence reward (RLOO paper) or added
    to the loss as a per-token k3 term (GRPO paper)."""
    epochs: int = 1
    """Passes over each rollout batch (1 = on-policy REINFORCE; >1 uses the clipped ratio)."""
    minibatch_size: int = 16
    """Episodes per optimizer step (processed in micro-batches of train.batch_size)."""
    clip: float = 0.2
    """Ratio clip epsilon."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kl: KLConfig = field(default_factory=lambda: KLConfig(adaptive=False))


@dataclass(frozen=True)
class OnlineDPOConfig(RunConfig):
    out_dir: str = "runs/online_dpo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    reward: str = ""
    """Reward source that ranks the two samples: a reward run dir, 'gold', or 'package.module:function'."""
    loss: Literal["dpo", "ipo"] = "dpo"
    """Preference loss applied to each fresh pair."""
    beta: float = 0.1
    """DPO/IPO beta."""
    minibatch_size: int = 16
    """Pairs per optimizer step (processed in micro-batches of train.batch_size)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
