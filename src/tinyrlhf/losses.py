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
