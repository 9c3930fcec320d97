"""Configs of the online-RL loops (PPO, RLOO/GRPO/REINFORCE++, online DPO, rejection sampling); see load.py for
loading and overrides."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .base import RunConfig, TrainConfig
from .load import FieldError, check_range


def _online_train(**kw) -> TrainConfig:
    """Online stages' defaults (configs/family_tree/{ppo,rloo,grpo,online_dpo}.yaml): 60 steps, constant lr
    after 10 warmup steps, micro-batches of 64, a line every 5 steps and a checkpoint every 20."""
    return TrainConfig(**{"max_steps": 60, "batch_size": 64, "warmup_steps": 10, "schedule": "constant",
                          "log_every": 5, "eval_every": 0, "save_every": 20, **kw})


def _check_online(cfg):
    if cfg.train.max_steps < 1:
        raise FieldError("train.max_steps", f"must be >= 1 for online methods (one step = one rollout batch; "
                                            f"train.epochs is for sft, reward, dpo and kto), got {cfg.train.max_steps}")


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 32
    """Prompts sampled per iteration (the rollout batch; RLOO/GRPO draw `k` completions for each)."""
    max_new_tokens: int = 24
    """Longest response; 0 = from the data's completion lengths (the default on your own data: responses
    cut short never end, and each then costs missing_eos_penalty)."""
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

    def __post_init__(self):
        for name in ("prompts_per_step", "max_prompt_tokens"):
            check_range(self, name, 1)
        check_range(self, "max_new_tokens", 0)
        check_range(self, "temperature", 0, lo_open=True)  # RL needs sampled responses: no greedy rollouts
        check_range(self, "top_k", 0)
        check_range(self, "top_p", 0, 1, lo_open=True)
        check_range(self, "missing_eos_penalty", 0)


@dataclass(frozen=True)
class RewardHTTPConfig:
    model: str = ""
    """With reward=http://...: the served reward model's name (its id in the server's /v1/models); empty = the
    server's only reward model."""
    timeout_s: float = 60.0
    """With reward=http://...: seconds one request may take (connecting, waiting, scoring) before it counts as
    failed."""
    retries: int = 3
    """With reward=http://...: tries after a failed one (no connection, no answer in time, HTTP 429, 500, 502,
    503 or 504); then the run stops with one line, its last checkpoint kept."""
    backoff_s: float = 1.0
    """With reward=http://...: seconds before the first retry, doubled before each next one (a longer
    Retry-After of a 429 answer wins)."""
    batch_size: int = 64
    """With reward=http://...: pairs sent in one request (the server scores 64 in one forward pass)."""
    api_key_env: str = "TINYRLHF_API_KEY"
    """With reward=http://...: the environment variable holding the server's API key, sent as `Authorization:
    Bearer KEY` when set (the key itself never enters the config or the run directory)."""

    def __post_init__(self):
        check_range(self, "timeout_s", 0, lo_open=True)
        check_range(self, "retries", 0)
        check_range(self, "backoff_s", 0)
        check_range(self, "batch_size", 1)


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

    def __post_init__(self):
        check_range(self, "coef", 0)
        check_range(self, "target", 0, lo_open=True)
        check_range(self, "horizon", 1)


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

    def __post_init__(self):
        check_range(self, "epochs", 1)
        check_range(self, "minibatch_size", 1)
        check_range(self, "clip", 0, lo_open=True)
        check_range(self, "value_clip", 0, lo_open=True)
        check_range(self, "vf_coef", 0)
        check_range(self, "gamma", 0, 1)
        check_range(self, "lam", 0, 1)
        check_range(self, "early_stop_kl", 0)


@dataclass(frozen=True)
class PPOConfig(RunConfig):
    out_dir: str = "runs/ppo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _online_train(lr=3e-5))
    """Optimisation, precision, logging and checkpoints (defaults: the README's PPO runs, lr 3e-5)."""
    reward: str = ""
    """Reward source: a reward run dir (or its final/), 'gold' (the task's gold reward: an oracle upper
    bound), 'package.module:function' called as f(prompts, completions) -> list of floats, or a reward model
    served by `tinyrlhf serve`: http://HOST:PORT (or its /v1/rewards URL; see reward_http)."""
    reward_http: RewardHTTPConfig = field(default_factory=RewardHTTPConfig)
    """How a served reward model (reward=http://...) is asked: model name, timeout, retries, batches, API key."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=64))
    """Sampling of each step's rollout batch."""
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.1, target=0.5, horizon=100))
    """KL penalty to the reference; adaptive towards 0.5 nats (horizon 100: at 500 the KL overshot to 0.8-1.0)."""
    ppo: PPOHyper = field(default_factory=lambda: PPOHyper(minibatch_size=16, early_stop_kl=0.05))
    """PPO epochs, clipping, value function and GAE."""

    def __post_init__(self):
        super().__post_init__()
        _check_online(self)


@dataclass(frozen=True)
class GroupConfig(RunConfig):
    out_dir: str = "runs/rloo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _online_train(lr=1e-4))
    """Optimisation, precision, logging and checkpoints (defaults: configs/family_tree/rloo.yaml, grpo.yaml)."""
    algo: Literal["rloo", "grpo", "reinforce-pp"] = "rloo"
    """Advantage: rloo (leave-one-out baseline), grpo (group mean/std normalised) or reinforce-pp
    (REINFORCE++: score minus the KL to go, normalised over the whole batch; with k >= 2 each prompt's mean
    score is subtracted first, REINFORCE++ w/ baseline)."""
    reward: str = ""
    """Reward source: a reward run dir (or its final/), 'gold', 'package.module:function' or http://HOST:PORT
    (a reward model served by `tinyrlhf serve`)."""
    reward_http: RewardHTTPConfig = field(default_factory=RewardHTTPConfig)
    """How a served reward model (reward=http://...) is asked: model name, timeout, retries, batches, API key."""
    k: int = 4
    """Samples per prompt (>= 2 for rloo and grpo: the baseline comes from the others; >= 1 for reinforce-pp)."""
    kl_in: Literal["reward", "loss"] | None = None
    """Where the KL to the reference goes: subtracted from the reward (RLOO paper: the sequence KL;
    REINFORCE++: each token's KL to go) or added to the loss as a per-token k3 term (GRPO paper);
    empty = reward for rloo and reinforce-pp, loss for grpo."""
    loss_type: Literal["token_mean", "grpo", "dr_grpo", "dapo"] = "token_mean"
    """How per-token losses are averaged (losses.POLICY_LOSS_WEIGHTS): token_mean (over every token of the
    minibatch, as PPO), grpo (over each response's tokens, then over responses; Shao et al. 2024), dr_grpo
    (each response's token sum over rollout.max_new_tokens, then the mean over responses; with algo=grpo also
    no division by the group std; Liu et al. 2025), dapo (token_mean with clip_high 0.28; Yu et al. 2025)."""
    epochs: int = 1
    """Passes over each rollout batch (1 = on-policy REINFORCE; >1 uses the clipped ratio)."""
    minibatch_size: int = 64
    """Episodes per optimizer step (processed in micro-batches of train.batch_size)."""
    clip: float = 0.2
    """Ratio clip epsilon (the lower one, 1 - clip, when clip_high is set)."""
    clip_high: float | None = None
    """Upper ratio clip epsilon, 1 + clip_high (DAPO's clip-higher); empty = clip, or 0.28 with loss_type=dapo.
    Only matters with epochs > 1 (at epochs = 1 the ratio is 1)."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=16))
    """Sampling of each step's rollout batch (prompts_per_step prompts, k samples each)."""
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.05, adaptive=False))
    """KL penalty to the reference (fixed beta 0.05 by default)."""

    def __post_init__(self):
        super().__post_init__()
        _check_online(self)
        if self.kl_in is None:
            object.__setattr__(self, "kl_in", "loss" if self.algo == "grpo" else "reward")
        if self.clip_high is None and self.loss_type == "dapo":
            object.__setattr__(self, "clip_high", 0.28)  # Yu et al. 2025, §3.1: ε_low 0.2, ε_high 0.28
        check_range(self, "k", 1 if self.algo == "reinforce-pp" else 2)
        check_range(self, "epochs", 1)
        check_range(self, "minibatch_size", 1)
        check_range(self, "clip", 0, lo_open=True)
        if self.clip_high is not None:
            check_range(self, "clip_high", 0, lo_open=True)


@dataclass(frozen=True)
class OnlineDPOConfig(RunConfig):
    out_dir: str = "runs/online_dpo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _online_train(lr=1e-4))
    """Optimisation, precision, logging and checkpoints (defaults: configs/family_tree/online_dpo.yaml)."""
    reward: str = ""
    """Reward source that ranks the two samples: a reward run dir, 'gold', 'package.module:function' or
    http://HOST:PORT (a reward model served by `tinyrlhf serve`)."""
    reward_http: RewardHTTPConfig = field(default_factory=RewardHTTPConfig)
    """How a served reward model (reward=http://...) is asked: model name, timeout, retries, batches, API key."""
    loss: Literal["dpo", "ipo"] = "dpo"
    """Preference loss applied to each fresh pair."""
    beta: float = 0.1
    """DPO/IPO beta (> 0)."""
    minibatch_size: int = 32
    """Pairs per optimizer step (processed in micro-batches of train.batch_size)."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=32))
    """Sampling of each step's rollout batch (two samples per prompt)."""

    def __post_init__(self):
        super().__post_init__()
        _check_online(self)
        check_range(self, "beta", 0, lo_open=True)
        check_range(self, "minibatch_size", 1)


@dataclass(frozen=True)
class RSConfig(RunConfig):
    out_dir: str = "runs/rs"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _online_train(lr=1e-4, max_steps=15, log_every=1,
                                                                     save_every=5))
    """Optimisation, precision, logging and checkpoints; one step = one round (defaults: configs/family_tree/rs.yaml:
    15 rounds of 64 prompts, a checkpoint every 5)."""
    reward: str = ""
    """Reward source that scores the samples: a reward run dir (or its final/), 'gold', 'package.module:function'
    or http://HOST:PORT (a reward model served by `tinyrlhf serve`)."""
    reward_http: RewardHTTPConfig = field(default_factory=RewardHTTPConfig)
    """How a served reward model (reward=http://...) is asked: model name, timeout, retries, batches, API key."""
    k: int = 4
    """Samples per prompt each round (>= 2: the best of them is kept)."""
    keep: Literal["best", "quantile"] = "best"
    """Which samples are fine-tuned on: the best of each prompt's k (RAFT, Dong et al. 2023), or every sample
    scoring at or above the `quantile` of the round's scores (ReST's threshold, Gulcehre et al. 2023)."""
    quantile: float = 0.75
    """keep=quantile: the share of the round's scores below the threshold, in [0, 1)."""
    epochs: int = 1
    """Passes over each round's kept samples."""
    minibatch_size: int = 16
    """Kept samples per optimizer step (processed in micro-batches of train.batch_size)."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=64))
    """Sampling of each round (prompts_per_step prompts, k samples each)."""

    def __post_init__(self):
        super().__post_init__()
        _check_online(self)
        check_range(self, "k", 2)
        check_range(self, "quantile", 0, 1, hi_open=True)
        check_range(self, "epochs", 1)
        check_range(self, "minibatch_size", 1)
