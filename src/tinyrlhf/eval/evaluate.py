"""`tinyrlhf eval`: score one model on a task's held-out prompts.

    tinyrlhf eval runs/family_tree/ppo --task family_tree --reward runs/family_tree/reward

Samples one completion per held-out prompt (fixed seed, settings recorded) and reports the gold reward
with a bootstrap 95 % CI, the greedy gold, the reward model's score (with --reward), the KL to a reference
model estimated from the samples, the win rate against the reference's own samples (judged by the gold
reward, a reward model or a chat endpoint; ties count half), length, distinct-1/2, and ROUGE-L / BLEU
against the task's reference answers when it has them.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import yaml

from ..errors import ConfigError
from ..models import _check_model_dir, load_tokenizer
from ..sampling import sample
from ..tasks import get_task
from . import metrics as M
from .policy import completion_logps


@dataclass(frozen=True)
class EvalSettings:
    n_prompts: int = 200
    """Held-out prompts (the task's eval split, drawn with data_seed)."""
    max_new_tokens: int = 24
    """Longest completion."""
    temperature: float = 1.0
    """Sampling temperature (1 makes the KL estimate exact in expectation)."""
    seed: int = 0
    """Sampling seed."""
    data_seed: int = 0
    """Seed of the task's eval prompts."""
    batch_size: int = 64
    """Prompts per generation batch."""
    precision: str = "auto"
    """bf16 autocast (auto/bf16) or fp32."""


def resolve_model(path: str, task_name: str) -> tuple[str, dict | None]:
    """A run dir (-> its final/) or a model dir. Returns (model dir, the run's config or None).
    A run trained on another task is refused: its scores on this task would mean nothing."""
    if not os.path.exists(path):
        raise ConfigError(f"'{path}': no such model or run directory")
    run_cfg = None
    cfg_file = os.path.join(path, "config.yaml")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            run_cfg = yaml.safe_load(f) or {}
        trained_on = (run_cfg.get("data") or {}).get("task") or ""
        if trained_on and trained_on != task_name:
            raise ConfigError(f"run '{path}' was trained on task '{trained_on}', not '{task_name}'")
        model_dir = os.path.join(path, "final")
        if not os.path.isdir(model_dir):
            raise ConfigError(f"run '{path}' has no final/ model yet (unfinished run? run its command again)")
    else:
        model_dir = path
    _check_model_dir(model_dir)
    return model_dir, run_cfg


def default_reference(run_cfg: dict | None) -> str:
    """The model a policy run started from (its SFT model), if it was a local directory."""
    start = ((run_cfg or {}).get("model") or {}).get("path") or ""
    return start if start and os.path.isdir(start) else ""


def _load(model_dir: str, device):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, load_tokenizer(model_dir)


def evaluate_model(path: str, task_name: str, *, reward: str = "", reference: str | None = None,
                   judge=None, settings: EvalSettings = EvalSettings(), device=None) -> dict:
    """All metrics of one model (see the module docstring). `reference=None` uses the run's starting
    model when there is one, "" none. `judge` (a tinyrlhf.eval.judges judge) defaults to the gold reward.
    Per-prompt gold rewards and the samples are returned too, for paired comparisons."""
    from ..train.engine import autocast
    from .judges import GoldJudge

    task = get_task(task_name)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_dir, run_cfg = resolve_model(path, task_name)
    if reference is None:
        reference = default_reference(run_cfg)
    s = settings
    prompts = task.prompts("eval", s.n_prompts, s.data_seed)
    model, tok = _load(model_dir, device)
    gen = dict(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, device=device)
    with autocast(device, s.precision):
        completions = sample(model, tok, prompts, temperature=s.temperature, seed=s.seed, **gen)
        greedy = sample(model, tok, prompts, temperature=0.0, seed=s.seed, **gen)
    gold = [task.gold_reward(p, c) for p, c in zip(prompts, completions)]
    mean, low, high = M.bootstrap_ci(gold, seed=s.seed)
    out: dict = {"model": model_dir, "task": task_name, "settings": asdict(s),
                 "gold": {"mean": mean, "low": low, "high": high, "max": task.max_gold},
                 "gold_greedy": sum(task.gold_reward(p, c) for p, c in zip(prompts, greedy)) / len(prompts),
                 "length": M.mean_length(completions),
                 "distinct_1": M.distinct_n(completions, 1), "distinct_2": M.distinct_n(completions, 2)}
    refs = [task.reference_answer(p) for p in prompts]
    if all(r is not None for r in refs):
        out["rouge_l"] = M.rouge_l(completions, refs)
        out["bleu"] = M.bleu(completions, refs)
    if reward:
        from ..train.rl import reward_source
        score, _ = reward_source(reward, task, device, s.precision)
        rm_scores = score(prompts, completions).tolist()
        m, lo, hi = M.bootstrap_ci(rm_scores, seed=s.seed)
        out["rm_score"] = {"mean": m, "low": lo, "high": hi, "reward": reward}
    if reference:
        ref_model, ref_tok = _load(resolve_model(reference, task_name)[0], device)
        policy_lp = completion_logps(model, tok, prompts, completions, device, s.precision)
        ref_lp = completion_logps(ref_model, ref_tok, prompts, completions, device, s.precision)
        kl = (policy_lp - ref_lp).tolist()  # E_y~π[log π(y|x) − log π_ref(y|x)], one sample per prompt
        m, lo, hi = M.bootstrap_ci(kl, seed=s.seed)
        out["kl_ref"] = {"mean": m, "low": lo, "high": hi, "reference": reference}
        with autocast(device, s.precision):
            ref_completions = sample(ref_model, ref_tok, prompts, temperature=s.temperature, seed=s.seed, **gen)
        judge = judge or GoldJudge(task)
        verdicts = judge.judge_many(prompts, completions, ref_completions)
        rate, lo, hi = M.win_rate(verdicts, seed=s.seed)
        out["win_rate"] = {"rate": rate, "low": lo, "high": hi, "judge": judge.name,
                           "against": reference}
        del ref_model
    out["per_prompt"] = {"gold": gold, **({"win": verdicts, "kl": kl} if reference else {})}
    out["samples"] = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    return out


def format_report(result: dict) -> str:
    g = result["gold"]
    lines = [f"model: {result['model']}  task: {result['task']}  prompts: {result['settings']['n_prompts']}",
             f"  gold reward          {g['mean']:.3f}  [95% CI {g['low']:.3f}, {g['high']:.3f}]  (max {g['max']})",
             f"  gold, greedy         {result['gold_greedy']:.3f}"]
    if "rm_score" in result:
        r = result["rm_score"]
        lines.append(f"  reward-model score   {r['mean']:.3f}  [{r['low']:.3f}, {r['high']:.3f}]")
    if "kl_ref" in result:
        k = result["kl_ref"]
        lines.append(f"  KL to reference      {k['mean']:.3f}  [{k['low']:.3f}, {k['high']:.3f}]  ({k['reference']})")
    if "win_rate" in result:
        w = result["win_rate"]
        lines.append(f"  win rate vs ref      {w['rate']:.3f}  [{w['low']:.3f}, {w['high']:.3f}]  judge: {w['judge']}")
    lines.append(f"  length               {result['length']['chars']:.1f} chars, {result['length']['words']:.1f} words")
    lines.append(f"  distinct-1 / -2      {result['distinct_1']:.3f} / {result['distinct_2']:.3f}")
    if "rouge_l" in result:
        lines.append(f"  ROUGE-L / BLEU       {result['rouge_l']:.3f} / {result['bleu']:.1f}")
    return "\n".join(lines)


def write_result(result: dict, out: str):
    """eval JSON (samples in a sibling .samples.jsonl), written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    samples = result.get("samples", [])
    body = {k: v for k, v in result.items() if k != "samples"}
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f, indent=2)
    os.replace(tmp, out)
    with open(tmp, "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in samples)
    os.replace(tmp, out.removesuffix(".json") + ".samples.jsonl")
