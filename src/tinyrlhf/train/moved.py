"""Did a preference or RL run move its policy at all? A run whose final policy is indistinguishable from its
starting model trained nothing, whatever its loss curve says (KTO under LoRA at full fine-tuning's lr 2e-5:
KL to the SFT model -0.002 after 150 steps, a win rate of exactly 0.5). At the end of every DPO-family, KTO
and online run this measures the KL to the reference and prints one warning, naming the likely knob, when it
cannot be told from zero.

The KL: offline runs on a task reuse the evaluation's `kl/ref`; on your own data the policy samples one
completion for each of up to 64 distinct prompts (held-out ones first) and KL = mean of log pi(y|x) -
log ref(y|x), with a normal 95 % interval over prompts. Online runs use the rollouts' own `kl/seq` of their
last steps. 'Did not move': the mean is below SMALL_KL nats and (offline) the interval includes 0. Runs of
fewer than MIN_STEPS steps are smoke tests and are not judged; eval.n_prompts=0 (evaluation off, as in
`tinyrlhf compare`, which evaluates final models itself) turns the check off.
"""
from __future__ import annotations

import math
import statistics
import sys

MIN_STEPS = 10
SMALL_KL = 0.05  # nats per completion
PROMPTS = 64


def knob(cfg) -> str:
    """What to change when the policy did not move, for this stage's config."""
    lora = "; LoRA usually needs ~10x full fine-tuning's" if cfg.lora.enabled else ""
    lr = f"raise train.lr (now {cfg.train.lr:g}{lora})"
    name = type(cfg).__name__
    if name == "PPOConfig":
        return f"{lr}, or lower kl.coef (now {cfg.kl.coef:g}) / raise kl.target (now {cfg.kl.target:g})"
    if name == "GroupConfig":
        return f"{lr}, or lower kl.coef (now {cfg.kl.coef:g})"
    longer = "train.max_steps / train.epochs" if name in ("PreferenceConfig", "KTOConfig") else "train.max_steps"
    beta = f", or lower beta (now {cfg.beta:g})" if getattr(cfg, "beta", None) is not None else ""
    return f"{lr}, train longer ({longer}){beta}"


def sampled_kl(model, tokenizer, prompts: list[str], reference, device, precision: str, max_new_tokens: int,
               seed: int) -> dict:
    """KL of the policy to the reference on its own samples: {moved/kl, moved/kl_low, moved/kl_high,
    moved/prompts}. `reference(prompts, completions)` gives the reference's log-probs."""
    from ..sampling import sample
    from .engine import autocast
    from .policy_eval import completion_logps

    with autocast(device, precision):
        completions = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                             seed=seed, device=device)
    policy = completion_logps(model, tokenizer, prompts, completions, device, precision)
    kls = (policy - reference(prompts, completions)).tolist()
    mean = statistics.fmean(kls)
    half = 1.96 * statistics.stdev(kls) / math.sqrt(len(kls)) if len(kls) > 1 else math.inf
    return {"moved/kl": mean, "moved/kl_low": mean - half, "moved/kl_high": mean + half, "moved/prompts": len(kls)}


def warn_if_still(cfg, summary: dict, stage: str, kl: float, low: float | None, what: str) -> bool:
    """Print the warning when `kl` cannot be told from zero; True if it did."""
    if not (kl < SMALL_KL and (low is None or low <= 0)):
        return False
    interval = f" [{low:.3f}, {summary.get('moved/kl_high', kl):.3f}]" if low is not None else ""
    print(f"warning: {stage}: the policy hardly moved from its starting model in {summary.get('steps')} steps "
          f"(KL {kl:.3f}{interval} nats, {what}): it learned next to nothing from the data; {knob(cfg)}",
          file=sys.stderr, flush=True)
    return True


def check_offline(cfg, summary: dict, stage: str, model, tokenizer, records: list, reference, device) -> dict:
    """The check for a DPO-family or KTO run that finished; returns the moved/* metrics it measured."""
    from .. import dist
    if not dist.is_main() or summary.get("steps", 0) < MIN_STEPS or cfg.eval.n_prompts == 0 or reference is None:
        return {}
    if "kl/ref" in summary:  # on a task: the evaluation's own estimate on its held-out prompts
        warn_if_still(cfg, summary, stage, summary["kl/ref"], None, "on the evaluation's samples")
        return {}
    prompts = list(dict.fromkeys(r.prompt for r in records))[:min(PROMPTS, cfg.eval.n_prompts)]
    if not prompts:
        return {}
    out = sampled_kl(model, tokenizer, prompts, reference, device, cfg.train.precision, cfg.eval.max_new_tokens,
                     cfg.seed)
    warn_if_still(cfg, {**summary, **out}, stage, out["moved/kl"], out["moved/kl_low"],
                  f"one sample on each of {len(prompts)} prompts")
    return out


def check_online(cfg, summary: dict, stage: str, recent_kl: list[float]) -> dict:
    """The check for an online run that finished, on the mean kl/seq of its last rollouts."""
    from .. import dist
    if not dist.is_main() or summary.get("steps", 0) < MIN_STEPS or not recent_kl:
        return {}
    kl = statistics.fmean(recent_kl)
    warn_if_still(cfg, summary, stage, kl, None, f"mean kl/seq of the last {len(recent_kl)} rollout batches")
    return {"moved/kl": kl}
