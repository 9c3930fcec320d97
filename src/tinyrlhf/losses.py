"""Every training loss as a pure function of tensors.

Each returns `(losses, metrics)`: `losses` is the per-example loss, shape (B,), and `metrics` a dict
of detached tensors. Callers reduce (usually `.mean()`); nothing here knows about models or configs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *,
                       margin: torch.Tensor | None = None):
    """Pairwise reward-model loss, −log σ(r_c − r_r − m) (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1;
    the optional margin m is Llama 2's, Touvron et al. 2023, eq. 2). Shapes (B,)."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    metrics = {"accuracy": (chosen_rewards > rejected_rewards).float().mean().detach(),
               "reward_margin": (chosen_rewards - rejected_rewards).mean().detach(),
               "rewards_chosen": chosen_rewards.mean().detach(),
               "rewards_rejected": rejected_rewards.mean().detach()}
    return losses, metrics


# ---------------------------------------------------------------------------------------------------
# Offline preference losses. Inputs are per-sequence log-probs, shape (B,): summed over completion
# tokens for the reference-based losses, length-averaged for SimPO and ORPO. All math runs in float32.
# ---------------------------------------------------------------------------------------------------

def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """Implicit-reward metrics shared by every pairwise loss; all detached scalars."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {"rewards_chosen": chosen_rewards.mean(),
            "rewards_rejected": rejected_rewards.mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "accuracy": (chosen_rewards > rejected_rewards).float().mean()}


def _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """log π/π_ref for chosen and rejected, in float32. Shapes (B,)."""
    chosen = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected = policy_rejected_logps.float() - ref_rejected_logps.float()
    return chosen, rejected


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
             beta: float, label_smoothing: float = 0.0):
    """DPO, with optional conservative label smoothing ε (the preference label is flipped with prob ε)."""
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                   ref_chosen_logps, ref_rejected_logps)
    h = chosen - rejected                                                   # (B,)
    # why: Rafailov et al. 2023, eq. 7, −log σ(β·h); with ε > 0 it is the expected loss under label noise,
    # −(1−ε)·log σ(β·h) − ε·log σ(−β·h) (conservative DPO, Mitchell 2023). logsigmoid is stable.
    losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
              - label_smoothing * F.logsigmoid(-beta * h))
    return losses, _pair_metrics(beta * chosen, beta * rejected)


def cdpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *,
              beta: float, label_smoothing: float = 0.1):
    """Conservative DPO: `dpo_loss` with label smoothing on by default (Mitchell 2023)."""
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta=beta, label_smoothing=label_smoothing)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float):
    """IPO: regress the log-ratio margin onto 1/(2β) instead of pushing it to infinity."""
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                   ref_chosen_logps, ref_rejected_logps)
    h = chosen - rejected                                                   # (B,)
    # why: Azar et al. 2023, eq. 17, (h − τ⁻¹/2)² with τ = β; the squared loss keeps the margin bounded.
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, _pair_metrics(beta * chosen, beta * rejected)


def hinge_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float):
    """SLiC-style hinge on the log-ratio margin (zero loss, zero gradient once β·h ≥ 1)."""
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps,
                                   ref_chosen_logps, ref_rejected_logps)
    h = chosen - rejected                                                   # (B,)
    # why: Zhao et al. 2023 (SLiC-HF), calibration loss max(0, δ − log π(y⁺) + log π(y⁻)) with δ = 1,
    # here on reference-normalised log-ratios scaled by β, as Liu et al. 2023 (RSO) do.
    losses = torch.relu(1 - beta * h)
    return losses, _pair_metrics(beta * chosen, beta * rejected)


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *,
               beta: float, gamma: float):
    """SimPO: reference-free; inputs are length-averaged log-probs, γ a target reward margin."""
    chosen = beta * policy_chosen_logps.float()                             # (B,)
    rejected = beta * policy_rejected_logps.float()                         # (B,)
    # why: Meng et al. 2024, eq. 6, −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ).
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses, _pair_metrics(chosen, rejected)


# Largest average log-prob used for ORPO's log-odds: at p = 0 (certainty) log(1 − e^p) is −inf.
_MAX_AVG_LOGP = -1e-12


def _log_odds(logps: torch.Tensor) -> torch.Tensor:
    """log(P / (1 − P)) from log P, stable: log P − log(−expm1(log P)). Shape preserved."""
    # why: expm1 keeps 1 − e^p exact for p → 0⁻ (p = −1e-9 gives 20.72, not inf); for p → −∞,
    # −expm1(p) → 1 and its log → 0, so the result tends to p with no overflow. The clamp only
    # bites at p ≥ −1e-12, where the odds are ≥ 1e12 anyway.
    logps = logps.clamp(max=_MAX_AVG_LOGP)
    return logps - torch.log(-torch.expm1(logps))


def orpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              chosen_nll: torch.Tensor, *, lam: float):
    """ORPO: SFT NLL on the chosen completion plus λ times an odds-ratio preference term.

    Inputs are length-averaged log-probs, (B,); `chosen_nll` is the per-example SFT loss, (B,).
    """
    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    log_odds_ratio = _log_odds(chosen) - _log_odds(rejected)               # (B,)
    # why: Hong et al. 2024, eq. 6-7, L = L_SFT + λ·L_OR with L_OR = −log σ(log odds(y_w) − log odds(y_l)).
    losses = chosen_nll.float() - lam * F.logsigmoid(log_odds_ratio)
    metrics = _pair_metrics(lam * chosen, lam * rejected)
    metrics["log_odds_ratio"] = log_odds_ratio.detach().mean()
    metrics["nll"] = chosen_nll.detach().float().mean()
    return losses, metrics


PREFERENCE_LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss, "cdpo": cdpo_loss, "hinge": hinge_loss,
                     "simpo": simpo_loss, "orpo": orpo_loss}
"""Pairwise preference losses by name; those in REFERENCE_FREE take no reference log-probs."""
REFERENCE_FREE = frozenset({"simpo", "orpo"})


# ---------------------------------------------------------------------------------------------------
# KTO: unpaired, binary feedback (one completion per row, labelled desirable or not).
# ---------------------------------------------------------------------------------------------------

def kto_reference_point(policy_mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor):
    """KTO's reference point z₀ = max(0, mean(log π − log π_ref)) over mismatched (prompt, completion)
    pairs, a batch estimate of KL(π ‖ π_ref) (Ethayarajh et al. 2024). Detached scalar: no
    gradient flows through z₀."""
    kl = (policy_mismatched_logps.detach().float() - ref_mismatched_logps.detach().float()).mean()
    return kl.clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             kl: torch.Tensor, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO per-row loss. `desirable` is a bool tensor (B,); `kl` the detached reference point z₀.

    Metrics `rewards_desirable` / `rewards_undesirable` are means over the rows present (0 when the
    group is absent); weight them by `count_desirable` / `count_undesirable` when averaging steps.
    """
    r = policy_logps.float() - ref_logps.float()                            # (B,) log π/π_ref
    kl = torch.as_tensor(kl, dtype=torch.float32, device=r.device).detach()
    desirable = desirable.to(device=r.device, dtype=torch.bool)
    # why: Ethayarajh et al. 2024, eq. 8, L = w(y)·(1 − v(x, y)) with v = σ(β(r − z₀)) for desirable y
    # and v = σ(β(z₀ − r)) for undesirable y.
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (r - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - r))))
    rewards = (beta * r).detach()
    n_desirable = desirable.sum()
    n_undesirable = (~desirable).sum()
    # Mean over present rows; clamp(min=1) keeps an absent group at 0 instead of 0/0 = NaN.
    metrics = {"rewards_desirable": torch.where(desirable, rewards, 0).sum() / n_desirable.clamp(min=1),
               "rewards_undesirable": torch.where(desirable, 0, rewards).sum() / n_undesirable.clamp(min=1),
               "count_desirable": n_desirable.float(),
               "count_undesirable": n_undesirable.float(),
               "kl": kl}
    return losses, metrics


# ---------------------------------------------------------------------------------------------------
# Online RL pieces (PPO, RLOO, GRPO). Token-level inputs are (B, T) aligned with response tokens, with a
# `mask` (B, T) of real tokens; these return per-token losses (B, T) that the caller reduces with
# `masked_mean`, because PPO averages over tokens, not sequences (lm-human-preference-details).
# ---------------------------------------------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the real tokens; with shift_mean=False the mean is added back (reward
    whitening keeps the reward's sign, lm-human-preference-details "whiten rewards"). Masked entries → 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π (Schulman 2020, "Approximating KL").
    k1 = log π − log π_ref: unbiased, can be negative on a token. k3 = (ρ − 1) − log ρ with
    ρ = π_ref/π: unbiased and always ≥ 0, lower variance when π is close to π_ref."""
    log_ratio = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (valid: k1, k3)")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), vectorised over time.

    rewards, values, mask: (B, T). The episode ends at the last real token: the value after it is 0.
    δ_t = r_t + γ·V_{t+1} − V_t and A_t = Σ_{s≥t} (γλ)^{s−t} δ_s, computed as δ @ M with the upper-
    triangular discount matrix M[s, t] = (γλ)^{s−t} for s ≥ t (T is a few dozen tokens: T² is cheap).
    Returns (advantages, returns = advantages + values), zero on masked tokens."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask                    # (B, T)
    T = rewards.shape[1]
    idx = torch.arange(T, device=rewards.device)
    power = (idx[:, None] - idx[None, :]).to(values.dtype)                       # s − t, (T, T)
    discount = torch.where(power >= 0, (gamma * lam) ** power.clamp(min=0), torch.zeros_like(power))
    advantages = (deltas @ discount) * mask                                      # (B, T)
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, *, clip: float, clip_high: float | None = None):
    """Clipped surrogate (Schulman et al. 2017, eq. 7), per token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε_high)),
    ρ = π/π_old. ε_high defaults to ε (symmetric); DAPO's clip-higher (Yu et al. 2025, eq. 10) raises it
    (ε_low 0.2, ε_high 0.28) so that unlikely tokens with a positive advantage can grow further.
    Metrics: clipfrac, and approx_kl = mean of ½(log ρ)² (the estimate used for early stopping)."""
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))
    losses = torch.maximum(unclipped, clipped)
    metrics = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
               "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
               "ratio": masked_mean(ratio.detach(), mask)}
    return losses, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, *, clip: float):
    """Clipped value loss, per token: ½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)
    (Ziegler et al. 2019 / OpenAI baselines' PPO2; lm-human-preference-details "value clipping")."""
    values = values.float()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err, clipped_err = (values - returns) ** 2, (clipped - returns) ** 2
    losses = 0.5 * torch.maximum(unclipped_err, clipped_err)
    metrics = {"value_clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask).detach()}
    return losses, metrics


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 4): each of the k samples of a
    prompt is baselined by the mean score of the OTHER k−1. scores: (P, k) with k ≥ 2 → (P, k)."""
    k = scores.shape[1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return scores - (scores.sum(1, keepdim=True) - scores) / (k - 1)


def grpo_advantages(scores: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-normalised advantage (Shao et al. 2024, §4.1.2): (s − mean_group) / (std_group + ε).
    scores: (P, k) → (P, k); a group with equal scores gets 0 (nothing to learn from it)."""
    mean = scores.mean(1, keepdim=True)
    std = scores.std(1, keepdim=True) if scores.shape[1] > 1 else torch.zeros_like(mean)
    return (scores - mean) / (std + eps)


def dr_grpo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO's advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.2): s − group mean,
    without GRPO's division by the group std (which up-weights prompts whose samples score alike).
    Also REINFORCE++'s group baseline (Hu et al. 2025, REINFORCE++ w/ baseline). scores: (P, k) → (P, k)."""
    return scores - scores.mean(1, keepdim=True)


def reinforce_pp_advantages(scores: torch.Tensor, kl_tokens: torch.Tensor, mask: torch.Tensor, *,
                            beta: float) -> torch.Tensor:
    """REINFORCE++ token advantages (Hu et al. 2025, eqs. 8-10), no critic, no group statistics.

    scores (B,), kl_tokens (B, T) the per-token KL to the reference (eq. 9: log π_old − log π_ref), mask (B, T).
    Eq. 8: A_t = s − β·Σ_{u≥t} KL_u (the return of token rewards −β·KL_u plus the score on the last token,
    γ = 1). Eq. 10: A is normalised over every real token of the batch, (A − mean) / std: one global
    baseline and scale instead of GRPO's per-prompt ones. Returns (B, T), 0 on masked tokens."""
    kl = kl_tokens.float() * mask
    kl_to_go = kl.flip(1).cumsum(1).flip(1)                                      # Σ_{u≥t} KL_u, (B, T)
    return masked_whiten((scores.float()[:, None] - beta * kl_to_go) * mask, mask)


# How the per-token policy losses of a minibatch are summed: each returns weights w (B, T), 0 on masked tokens,
# with loss = Σ w·l over the minibatch. Computed once over the whole minibatch, they make the loss exact under
# any split into micro-batches or ranks (each part sums its own rows' w·l).

def token_mean_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """1 / (tokens in the minibatch): every token counts the same, a long response counts more (PPO's token
    mean; DAPO's token-level loss, Yu et al. 2025, eq. 8: 1/Σ_i|o_i| · Σ_i Σ_t)."""
    mask = mask.float()
    return mask / mask.sum().clamp(min=1)


def sequence_mean_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """1 / (|o_i| · B): the mean over each response's tokens, then over responses (GRPO, Shao et al. 2024,
    eq. 3: 1/G Σ_i 1/|o_i| Σ_t). A token of a short response weighs more than one of a long response."""
    mask = mask.float()
    return mask / mask.sum(1, keepdim=True).clamp(min=1) / max(mask.shape[0], 1)


def constant_length_weights(mask: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """1 / (max_tokens · B): token sums over a constant instead of each response's length (Dr. GRPO, Liu et
    al. 2025, §3.2: the 1/|o_i| of GRPO biases towards long wrong and short right answers)."""
    return mask.float() / (max_tokens * max(mask.shape[0], 1))


POLICY_LOSS_WEIGHTS = {"token_mean": token_mean_weights, "grpo": sequence_mean_weights,
                       "dr_grpo": constant_length_weights, "dapo": token_mean_weights}
"""loss_type -> how per-token policy losses are summed (RLOO/GRPO/REINFORCE++, train/group.py)."""
