"""Pieces every online-RL loop shares (PPO, RLOO, GRPO, online DPO): where rewards come from, the KL
controller, which prompts a step sees, the reference, value models, and scoring a rollout with the policy.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import random
import sys
from typing import Callable

import torch
from torch import nn

from ..data.collate import encode
from ..errors import ConfigError, RewardSourceError
from ..logprobs import token_logps
from ..loading import unwrap
from ..models import load_reward_model, score_encoded, set_dropout, trunk_and_head
from .engine import autocast, compute_dtype
from .reference import reference_disabled


# ---------------------------------------------------------------- reward sources

def reward_model_dir(spec: str) -> str | None:
    """A reward run dir or its final/ -> the final/ dir; None if `spec` is not a path to one."""
    for d in (os.path.join(spec, "final"), spec):
        if os.path.isfile(os.path.join(d, "reward_head.safetensors")):
            return d
    return None


def reward_source(spec: str, task, device, precision: str, max_length: int = 256, check_scale: bool = True,
                  http=None):
    """f(prompts, completions) -> (B,) float tensor, checked. `spec`: 'gold', a reward-model run dir,
    'package.module:function', or the URL of a reward model served by `tinyrlhf serve` (http://HOST:PORT,
    or its /v1/rewards; `http`: a RewardHTTPConfig, its timeout, retries and batches). Returns (function,
    reward model or None). With `check_scale`, the first batch a reward model scores is checked for an
    extreme scale (train/reward.py scale_warning)."""
    if not spec:
        raise ConfigError("reward: no reward source given (a reward run dir, 'gold', 'module:function' or "
                          "http://HOST:PORT)")
    rm = None
    if spec == "gold":
        if task is None:
            raise ConfigError("reward=gold needs data.task (a built-in task with a gold reward)")
        fn = lambda prompts, completions: [task.gold_reward(p, c) for p, c in zip(prompts, completions)]  # noqa
    elif (d := reward_model_dir(spec)) is not None:
        rm, rm_tok = load_reward_model(d)
        rm = rm.to(device).requires_grad_(False)

        def fn(prompts, completions):
            # Re-tokenised with the reward model's own tokenizer: policy and RM need not share one.
            return score_encoded(rm, encode(rm_tok, prompts, completions, max_length), rm_tok.pad_token_id,
                                 device, lambda: autocast(device, precision))
    elif spec.startswith(("http://", "https://")):
        from .reward_http import http_reward
        fn = http_reward(spec, http, max_length, "bf16" if compute_dtype(device, precision) == torch.bfloat16
                         else "fp32")
    elif ":" in spec and not os.path.exists(spec):
        fn = _import_callable(spec)
    else:
        raise ConfigError(f"reward '{spec}': not 'gold', not a reward run directory (no "
                          "reward_head.safetensors in it or its final/), not 'module:function', not http://HOST:PORT")
    checked = _checked(fn, spec)
    if rm is None or not check_scale:
        return checked, rm
    first = [True]

    def scored(prompts: list[str], completions: list[str]) -> torch.Tensor:
        out = checked(prompts, completions)
        if first[0]:
            from .reward import scale_warning
            first[0] = False
            if line := scale_warning(out, spec, rm.normalized_on):
                print(line, flush=True)
        return out
    return scored, rm


def _import_callable(spec: str) -> Callable:
    """`package.module:function` -> the function. The working directory is importable, as under
    `python -m`, so `reward=my_rewards:score` finds ./my_rewards.py from the `tinyrlhf` command too."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"reward '{spec}': expected 'package.module:function'")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except Exception as e:  # ImportError, AttributeError, SyntaxError or whatever the module raises on import
        raise ConfigError(f"reward '{spec}': cannot import it ({type(e).__name__}: {e})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not callable(fn):
        raise ConfigError(f"reward '{spec}' is a {type(fn).__name__}, not a function f(prompts, completions)")
    return fn


def _checked(fn: Callable, spec: str) -> Callable:
    def call(prompts: list[str], completions: list[str]) -> torch.Tensor:
        try:
            out = fn(prompts, completions)
        except RewardSourceError:  # already one line naming the source (the HTTP client's)
            raise
        except Exception as e:  # a user callable may raise anything: report it as the source's failure
            raise RewardSourceError(f"reward '{spec}' failed: {type(e).__name__}: {e}") from e
        try:
            scores = torch.as_tensor(out, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise RewardSourceError(f"reward '{spec}' returned {type(out).__name__}, not numbers") from None
        if scores.shape != (len(completions),):
            raise RewardSourceError(f"reward '{spec}' returned shape {tuple(scores.shape)} for "
                                    f"{len(completions)} completions; expected ({len(completions)},)")
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).sum())
            raise RewardSourceError(f"reward '{spec}' returned {bad} non-finite score(s) (NaN or inf)")
        return scores
    return call


# ---------------------------------------------------------------- KL coefficient

class KLController:
    """beta of the KL penalty. Adaptive (Ziegler et al. 2019, eq. 2): e = clip(KL/target − 1, ±0.2),
    beta <- beta·(1 + e·n/horizon) after n episodes; fixed otherwise.

    Its start: beta is not lowered before the KL has first reached the target (`reached`). A policy starts at
    KL 0, so eq. 2 would lower beta on every early step; with PPO's horizon of 100 episodes and 64 per step
    that is -12.8 % a step, beta fell from 0.1 to 0.012 in 20 steps on a small own-data set and the KL then
    jumped past 1 (3.4 within 8 steps in the report of issue 23), with nothing left to hold it. Raising beta
    when the KL is above the target is unchanged."""

    def __init__(self, coef: float, adaptive: bool, target: float, horizon: int):
        if coef < 0 or (adaptive and (target <= 0 or horizon <= 0)):
            raise ConfigError("kl: need coef >= 0, and target > 0 and horizon > 0 when adaptive")
        self.value, self.adaptive, self.target, self.horizon = coef, adaptive, target, horizon
        self.reached = False

    def update(self, kl: float, n_episodes: int):
        if self.adaptive and math.isfinite(kl):
            self.reached = self.reached or kl >= self.target
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            if error > 0 or self.reached:
                self.value *= 1.0 + error * n_episodes / self.horizon


# ---------------------------------------------------------------- prompts and reference

def prompts_for_step(prompts: list[str], step: int, n: int, seed: int) -> list[str]:
    """The n prompts of (1-based) step `step`: consecutive slices of a per-epoch seeded shuffle, so a
    resumed run sees exactly the prompts an uninterrupted one would."""
    out: list[str] = []
    pos = (step - 1) * n
    while len(out) < n:
        epoch, offset = divmod(pos, len(prompts))
        order = list(range(len(prompts)))
        random.Random(f"prompts:{seed}:{epoch}").shuffle(order)
        take = order[offset:offset + n - len(out)]
        out += [prompts[i] for i in take]
        pos += len(take)
    return out


def frozen_reference(policy):
    """The reference: with LoRA, None (the policy with adapters disabled serves); else a frozen copy of
    the starting weights (the one extra model full fine-tuning needs)."""
    if hasattr(policy, "disable_adapter"):
        return None
    ref = copy.deepcopy(policy).eval()
    return ref.requires_grad_(False)


@torch.no_grad()
@contextlib.contextmanager
def reference_model(policy, reference):
    """The model that computes reference log-probs: the frozen copy, or (LoRA, `reference` None) the
    policy in eval mode with its adapters disabled, its mode restored after."""
    if reference is not None:
        yield reference
        return
    was_training = policy.training
    policy.eval()
    try:
        with reference_disabled(policy):
            yield policy
    finally:
        policy.train(was_training)


def reference_token_logps(policy, reference, seqs: dict, temperature: float) -> torch.Tensor:
    with reference_model(policy, reference) as model:
        return token_logps(model, seqs["input_ids"], seqs["attention_mask"], seqs["completion_mask"],
                           temperature=temperature)


def select_groups(groups: dict, prompts: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(sub-batch, completion rows): the part of a `pad_groups` batch holding the given prompts and all k
    completions of each, and which rows of the whole batch those completions are."""
    k = groups["completion_ids"].shape[0] // groups["prompt_ids"].shape[0]
    rows = (prompts[:, None] * k + torch.arange(k, device=prompts.device)).reshape(-1)
    return ({"prompt_ids": groups["prompt_ids"][prompts], "prompt_mask": groups["prompt_mask"][prompts],
             "completion_ids": groups["completion_ids"][rows], "completion_mask": groups["completion_mask"][rows]},
            rows)


# ---------------------------------------------------------------- values

class ValueHead(nn.Module):
    """Scalar value per position from a trunk's hidden states. Shared: the policy's trunk (one backbone
    for policy and value, as in OpenAI's lm-human-preferences). Separate: its own trunk (`lm`)."""

    def __init__(self, hidden: int, lm=None):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)  # start from V = 0: no spurious advantages on step one
        nn.init.zeros_(self.head.bias)

    def forward(self, hidden):  # (B, T, H) -> (B, T)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def trunk_values(self, seqs: dict) -> torch.Tensor:
        """Separate critic: its own trunk's hidden states -> values, (B, T)."""
        trunk, _ = trunk_and_head(self.lm)
        mask = seqs["attention_mask"]
        hidden = trunk(input_ids=seqs["input_ids"], attention_mask=mask,
                       position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        return self(hidden)


def hidden_size(model) -> int:
    cfg = unwrap(model).config
    return getattr(cfg, "hidden_size", None) or cfg.n_embd


def build_value(policy, value_model: str, value_init: str, reward_model, device) -> ValueHead:
    if value_model == "shared":
        return ValueHead(hidden_size(policy)).to(device)
    if value_init:
        from ..loading import check_model_dir, load_causal_lm
        check_model_dir(value_init, "ppo.value_init")
        lm = load_causal_lm(value_init)
    elif reward_model is not None:
        lm = copy.deepcopy(reward_model.lm)  # InstructGPT: the value function starts from the RM
    else:
        lm = copy.deepcopy(policy)
        if hasattr(lm, "merge_and_unload"):  # LoRA: the critic is a plain copy of the starting weights
            lm = lm.merge_and_unload()
    set_dropout(lm, 0.0)
    lm.requires_grad_(True)
    return ValueHead(hidden_size(lm), lm).to(device)


def policy_forward(policy, value: ValueHead | None, seqs: dict, prompt_len: int, temperature: float):
    """Log-probs of the response tokens under the policy (B, R) and, when a value model is given, the
    value of the state before each response token (B, R). One trunk pass when the value head is shared."""
    need_hidden = value is not None and value.lm is None
    out = token_logps(policy, seqs["input_ids"], seqs["attention_mask"], seqs["completion_mask"],
                      temperature=temperature, return_hidden=need_hidden)
    logprobs, hidden = out if need_hidden else (out, None)
    # token t+1 is predicted at position t: response token j sits at column P + j, predicted at P + j − 1
    logprobs = logprobs[:, prompt_len - 1:]
    if value is None:
        return logprobs, None
    if need_hidden:
        values = value(hidden[:, prompt_len - 1:-1])
    else:
        values = value.trunk_values(seqs)[:, prompt_len - 1:-1]
    return logprobs, values


def check_finite(name: str, x: torch.Tensor, step: int, run):
    """Raise TrainingDiverged (stage, step and the checkpoint kept, from `run`: a RunDir) if `x` has NaN/inf."""
    from .guard import TrainingDiverged
    if not torch.isfinite(x).all():
        raise TrainingDiverged(run.diverged_message(name, "NaN/inf", step))
