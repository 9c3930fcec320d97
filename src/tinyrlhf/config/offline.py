"""Configs of the supervised and offline stages: SFT, the reward model, the DPO family and KTO. Each stage's
defaults are the values tuned on family_tree (configs/family_tree/*.yaml, README "Results measured here"), so a
stage run without a config does what the measured runs did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .base import EvalConfig, RunConfig, TrainConfig
from .load import FieldError, check_range


# Stage defaults, from configs/family_tree/STAGE.yaml (tests/test_config.py holds them equal).
def _train(**kw) -> TrainConfig:
    return TrainConfig(**kw)


@dataclass(frozen=True)
class SFTConfig(RunConfig):
    out_dir: str = "runs/sft"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _train(
        lr=2e-3, weight_decay=0.01, warmup_steps=30, max_steps=3000, log_every=20, eval_every=500,
        save_every=500, prompt_loss_weight=1.0))
    """Optimisation, precision, logging and checkpoints. Defaults: the family_tree SFT of the README
    (gpt2-tiny from random init: lr 2e-3, 3,000 steps x 32, prompt loss on; configs/family_tree/data.yaml
    says why)."""
    learnability_k: int = 8
    """After training (tasks with a gold reward, eval.n_prompts > 0): sample k answers per eval prompt at T=1
    and report the oracle best-of-k gold, coverage@k and the coin-flip rate of pairs (learn/* in summary.json):
    whether preference methods will have anything to learn from this model. 0 = off."""

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "learnability_k", 0, 64)
        if self.learnability_k == 1:
            raise FieldError("learnability_k", "must be 0 (off) or >= 2 (a pair needs two samples)")


@dataclass(frozen=True)
class RewardConfig(RunConfig):
    out_dir: str = "runs/reward"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _train(
        lr=3e-4, max_steps=1000, log_every=20, eval_every=500, save_every=500))
    """Optimisation, precision, logging and checkpoints (defaults: the README's 0.835 reward model)."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=32))
    """Sampling settings of the normalisation samples (normalize_on): completions of up to 32 tokens."""
    center_coef: float = 0.0
    """Reward centring: adds center_coef * (r_c + r_r)^2 to the loss, keeping raw rewards near 0."""
    normalize_on: str = ""
    """The policy to normalise on: a model dir (the SFT run's final/, the model PPO will start from) whose own
    samples on the training prompts get rewards of mean 0 and std 1 (Ziegler et al. 2019, §2.2). Empty =
    normalise on the chosen completions of the training pairs, which can be far from what the policy
    writes (PPO then warns when its first samples score far from mean 0 / std 1)."""
    normalize_samples: int = 256
    """Completions used to compute the normalisation (>= 2: it needs a standard deviation)."""
    pool: Literal["last", "mean"] = "mean"
    """Where the scalar head reads the trunk: the last token (InstructGPT) or the mean over completion
    tokens (with logp_feature: 0.835 gold accuracy on family_tree against 0.70 for last-token alone)."""
    logp_feature: bool = True
    """Add a learned weight (init 1) times the completion's mean token log-prob under the trunk's LM head."""
    rankings: bool = False
    """Also train on the task data directory's rankings.jsonl (each K-way ranking expands to K(K-1)/2 pairs)."""

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "center_coef", 0)
        check_range(self, "normalize_samples", 2)


# Offline preference losses: each loss's own default beta, and the range its authors (or our runs) support
# for the keys it is sensitive to; `loss_warnings` names a value outside it (e.g. one left from another loss).
LOSS_BETA = {"dpo": 0.5, "cdpo": 0.5, "ipo": 0.1, "hinge": 0.5, "simpo": 2.0}
"""Default beta per loss. dpo 0.5: on family_tree 0.1 drifted (KL 1.5) and lost gold; ipo 0.1: 0.5 barely
moved (KL 0.05); cdpo and hinge use beta on DPO's scale (the logit beta*h); simpo: Meng et al. 2024."""


@dataclass(frozen=True)
class PreferenceConfig(RunConfig):
    out_dir: str = "runs/dpo"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _train(
        lr=2e-4, max_steps=150, log_every=20, eval_every=0))
    """Optimisation, precision, logging and checkpoints (defaults: the README's DPO/IPO runs)."""
    loss: Literal["dpo", "ipo", "cdpo", "hinge", "simpo", "orpo"] = "dpo"
    """Offline preference loss (tinyrlhf.losses.PREFERENCE_LOSSES)."""
    beta: float | None = None
    """Strength of the KL-style regularisation (DPO/IPO/cDPO/hinge) or SimPO's reward scale; empty = the
    loss's own default: dpo/cdpo/hinge 0.5, ipo 0.1, simpo 2.0 (Meng et al. 2024: 2.0-2.5). ORPO does
    not use it (its weight is orpo_lambda)."""
    label_smoothing: float = 0.1
    """cDPO: assumed share of flipped labels, in [0, 0.5) (only used by loss=cdpo)."""
    gamma: float = 0.5
    """SimPO target reward margin (Meng et al. 2024 use 0.3-1.6 with beta 2-2.5)."""
    orpo_lambda: float = 0.1
    """ORPO weight of the odds-ratio term (Hong et al. 2024: 0.1; TRL's ORPOConfig calls it beta)."""
    ref_cache_dir: str = "runs/cache/ref_logps"
    """Where reference log-probs are cached (keyed by model and data fingerprint)."""

    def __post_init__(self):
        super().__post_init__()
        if self.beta is None and self.loss in LOSS_BETA:
            object.__setattr__(self, "beta", LOSS_BETA[self.loss])
        if self.beta is not None:
            check_range(self, "beta", 0, lo_open=True)
        check_range(self, "label_smoothing", 0, 0.5, hi_open=True)
        check_range(self, "gamma", 0)
        check_range(self, "orpo_lambda", 0)
        if not self.ref_cache_dir.strip():
            raise FieldError("ref_cache_dir", "is empty")


SIMPO_MAX_LR = 1e-5  # above it SimPO lost gold on family_tree (loss_warnings); Meng et al. 2024 use 3e-7-1e-6


def loss_warnings(cfg) -> list[str]:
    """One line per loss-sensitive key of an offline preference config that sits outside what its loss
    needs: most often a value kept from another loss's config (`--config dpo.yaml loss=simpo`)."""
    if not isinstance(cfg, PreferenceConfig):
        return []
    out, loss, beta = [], cfg.loss, cfg.beta
    other = next((name for name, b in LOSS_BETA.items() if b == beta and LOSS_BETA.get(loss) != b), None)
    from_other = f" ({other}'s value)" if other else ""
    if loss == "simpo":
        if not 2.0 <= beta <= 10.0:
            out.append(f"loss=simpo with beta={beta:g}{from_other}: SimPO's beta scales length-normalised "
                       "log-probs; Meng et al. 2024 use 2.0-2.5 (simpo's default here: 2.0)")
        if not 0.3 <= cfg.gamma <= 1.6:
            out.append(f"loss=simpo with gamma={cfg.gamma:g}: Meng et al. 2024 use a target margin of 0.3-1.6")
        if cfg.train.lr > SIMPO_MAX_LR:
            # measured on family_tree from the README's SFT model, dpo.yaml's pairs, 150 steps x 32 (SFT 0.39)
            out.append(f"loss=simpo at train.lr={cfg.train.lr:g}: no reference holds SimPO near the SFT model; "
                       "on family_tree lr 2e-4 collapsed it (gold 0.39 -> 0.03 at beta 2, 0.21 at beta 0.5), "
                       "2e-5 lost 0.08, 5e-6 kept it (KL 0.05); use train.lr<=5e-6")
    elif loss == "ipo" and beta != LOSS_BETA["ipo"] and other:
        out.append(f"loss=ipo with beta={beta:g}{from_other}: IPO's target margin is 1/(2 beta) = {1 / (2 * beta):g} "
                   "nats; on family_tree beta 0.5 barely moved the model (KL 0.05); ipo's default is 0.1")
    elif loss == "orpo":
        if beta is not None:
            out.append(f"loss=orpo ignores beta={beta:g}; ORPO's preference weight is orpo_lambda "
                       f"(now {cfg.orpo_lambda:g}; TRL's ORPOConfig calls it beta)")
        if not 0.05 <= cfg.orpo_lambda <= 1.0:
            out.append(f"loss=orpo with orpo_lambda={cfg.orpo_lambda:g}: Hong et al. 2024 use 0.1 (0.1-1.0 in "
                       "their ablation)")
    return out


@dataclass(frozen=True)
class KTOConfig(RunConfig):
    out_dir: str = "runs/kto"
    """Run directory (config.yaml, metrics.jsonl, summary.json, checkpoints/, final/)."""
    train: TrainConfig = field(default_factory=lambda: _train(
        lr=2e-5, max_steps=150, log_every=20, eval_every=0))
    """Optimisation, precision, logging and checkpoints (lr 2e-5: on scripted pairs KTO collapsed at >= 5e-5)."""
    beta: float = 0.1
    """KTO beta (> 0)."""
    desirable_weight: float = 1.0
    """lambda_D: weight of desirable examples."""
    undesirable_weight: float = 1.0
    """lambda_U: weight of undesirable examples (KTO paper: keep lambda_D n_D / lambda_U n_U in [1, 4/3])."""
    ref_cache_dir: str = "runs/cache/ref_logps"
    """Where reference log-probs are cached (keyed by model and data fingerprint)."""

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "beta", 0, lo_open=True)
        check_range(self, "desirable_weight", 0, lo_open=True)
        check_range(self, "undesirable_weight", 0, lo_open=True)
        if not self.ref_cache_dir.strip():
            raise FieldError("ref_cache_dir", "is empty")
