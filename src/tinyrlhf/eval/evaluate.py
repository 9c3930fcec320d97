"""`tinyrlhf eval`: score one model on a task's held-out prompts, or on your own prompts file.

    tinyrlhf eval runs/family_tree/ppo --task family_tree --reward runs/family_tree/reward
    tinyrlhf eval runs/hh/dpo --prompts hh/test.jsonl --reward runs/hh-rm --judge chat --judge-url URL

Samples one completion per prompt (fixed seed, settings recorded) and reports the reward model's score
with a bootstrap 95 % CI (with --reward), the KL to a reference model estimated from the samples, the
win rate against the reference's own samples (judged by the gold reward, a reward model or a chat
endpoint; ties count half), length, distinct-1/2, and ROUGE-L / BLEU against reference answers when
there are some. On a built-in task also the gold reward with a CI and the greedy gold; a prompts file
has no gold reward, and the report says so. The model may be a run directory, a model directory or an
unmerged LoRA final/ (its adapters are merged in memory).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, replace

import torch
import yaml

from ..diskio import DiskError, atomic_write, make_dirs
from ..errors import ConfigError
from ..loading import HUB_NAME, check_model_dir, find_relative, load_causal_lm, resolve_model_path
from ..models import load_tokenizer
from ..sampling import sample
from ..tasks import get_task
from . import metrics as M
from ..train.data import data_new_tokens
from ..train.policy_eval import completion_logps


@dataclass(frozen=True)
class EvalSettings:
    n_prompts: int = 200
    """Prompts: the task's held-out prompts (drawn with data_seed), or the first N distinct prompts of --prompts."""
    max_new_tokens: int = 0
    """Longest completion; 0 = 24 on a task, else from the data's completion lengths (the prompts file's
    reference answers, or the run's training file): 1.25 x their 95th percentile in tokens, plus one."""
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


def resolve_model(path: str, task_name: str | None = None) -> tuple[str, dict | None]:
    """A run dir (-> its final/) or a model dir (an unmerged LoRA final/ too). Returns (model dir, the
    run's config or None). A run trained on another task is refused: its scores there would mean nothing."""
    if not os.path.exists(path):
        raise ConfigError(f"'{path}': no such model or run directory")
    run_cfg = None
    cfg_file = os.path.join(path, "config.yaml")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            run_cfg = yaml.safe_load(f) or {}
        trained_on = (run_cfg.get("data") or {}).get("task") or ""
        if task_name and trained_on and trained_on != task_name:
            raise ConfigError(f"run '{path}' was trained on task '{trained_on}', not '{task_name}'")
        model_dir = os.path.join(path, "final")
        if not os.path.isdir(model_dir):
            raise ConfigError(f"run '{path}' has no final/ model yet (unfinished run? run its command again)")
    else:
        model_dir = path
    check_model_dir(model_dir)
    return model_dir, run_cfg


def default_reference(run_cfg: dict | None, run_dir: str = ".") -> str:
    """The model a policy run started from (its SFT model), if it is a local directory. A relative
    model.path is looked up from the run directory upwards, then here (loading.find_relative); a Hugging
    Face hub name is its snapshot in the hub cache."""
    start = ((run_cfg or {}).get("model") or {}).get("path") or ""
    found = find_relative(start, run_dir) if start else None
    if start and found is None and HUB_NAME.fullmatch(start):  # a hub name: the snapshot the run trained from
        try:
            found = resolve_model_path(start)
        except ConfigError:
            found = None
    return found if found and os.path.isdir(found) else ""


def load_eval_model(model_dir: str, device):
    """A model directory (or LoRA final/) in fp32 eval mode on `device`, and its tokenizer."""
    model = load_causal_lm(model_dir, dtype=torch.float32).to(device).eval()
    return model, load_tokenizer(model_dir)


def _ci(values: list[float], seed: int) -> dict:
    mean, low, high = M.bootstrap_ci(values, seed=seed)
    return {"mean": mean, "low": low, "high": high}


def eval_prompts(task, prompts_file, fmt: str, s: EvalSettings, tokenizer,
                 counts: dict | None = None, columns: dict | None = None) -> tuple[list[str], list]:
    """(prompts, reference answers or Nones): the task's eval split, or the first n_prompts distinct
    prompts of a file in any supported format, in the model's prompt format (data/templates.py: the
    template its tokenizer carries; a warning when the file is written in another). `counts` receives
    load_prompts' counts (read, duplicates, kept)."""
    if task is not None:
        prompts = task.prompts("eval", s.n_prompts, s.data_seed)
        return prompts, [task.reference_answer(p) for p in prompts]
    from ..data import load_prompts
    from ..data.templates import data_format, format_records, preview, template_of
    records = load_prompts(prompts_file, fmt, columns=columns, max_records=s.n_prompts, counts=counts)
    name = template_of(tokenizer)
    if name is not None:
        written = data_format(records)
        records, example = format_records(records, name, tokenizer)
        if example and (written != name or name == "tokenizer" and written == "plain"):
            print(f"warning: the prompts of {prompts_file} are in the {written} prompt format, but the model uses "
                  f"the {name} format; they are rendered in {name}: {preview(example[0])} -> {preview(example[1])}",
                  file=sys.stderr, flush=True)
    return [r.prompt for r in records], [r.reference for r in records]


def prompts_new_tokens(model, tokenizer, refs: list, prompts_file, run_cfg: dict | None, run_dir: str) -> int:
    """max_new_tokens for a prompts file: sized on its reference answers, else on the run's training
    completions, else 24; at most half the model's context. Prints which, once."""
    from ..loading import unwrap
    given = [r for r in refs if r]
    n, source = data_new_tokens(tokenizer, given), f"the {len(given)} reference answers of {prompts_file}"
    if n is None:
        texts, train_file = training_completions(run_cfg, run_dir)
        n, source = data_new_tokens(tokenizer, texts), f"the {len(texts)} completions of {train_file}"
    if n is None:
        n, source = 24, "the default: no reference answers or training file to size it on"
    n = min(n, unwrap(model).config.max_position_embeddings // 2)
    print(f"max_new_tokens {n} (from {source}; max_new_tokens=N sets it)", flush=True)
    return n


def training_completions(run_cfg: dict | None, run_dir: str) -> tuple[list[str], str]:
    """The completions of a run's training file (its path as the run was started; looked up from the run
    directory upwards, then here) or data.dataset, and that path or name as the config gives it; ([], "")
    when there is none."""
    from ..data import load_prompts, open_dataset
    from ..errors import DataError
    data = (run_cfg or {}).get("data") or {}
    path = find_relative(data.get("train_file") or "", run_dir) if data.get("train_file") else None
    if data.get("dataset") and not path:  # data.dataset: its training split (from the datasets cache)
        try:
            path = open_dataset(data["dataset"], split=data.get("split") or "", subset=data.get("subset") or "")
        except DataError:
            return [], ""
        data = {**data, "train_file": data["dataset"]}
    elif not path or not os.path.isfile(path):
        return [], ""
    columns = {k: v for k, v in (data.get("columns") or {}).items() if v} or None
    from ..data import load_sft
    try:  # every record's completion (pairs: the chosen one), else the distinct prompts' references
        return [r.completion for r in load_sft(path, data.get("format") or "auto", columns=columns,
                                               skip_bad=True)], data["train_file"]
    except DataError:
        pass
    try:
        records = load_prompts(path, data.get("format") or "auto", columns=columns, skip_bad=True)
    except DataError:
        return [], ""
    return [r.reference for r in records if r.reference], data["train_file"]


def evaluate_model(path: str, task_name: str | None = None, *, prompts_file="", prompts_format: str = "auto",
                   prompts_columns: dict | None = None,
                   reward: str = "", reference: str | None = None, judge=None,
                   settings: EvalSettings = EvalSettings(), device=None, task=None) -> dict:
    """All metrics of one model (see the module docstring), on `task_name`'s held-out prompts or on the
    prompts of `prompts_file` (a path, or a dataset split's rows: data.open_dataset). `reference=None` uses the
    run's starting model when there is one, "" none.
    `judge`: a tinyrlhf.eval.judges judge, or "gold" / "reward" (the task's gold reward / the reward
    model of `reward`); default gold on a task, else the reward model when there is one, else no win
    rate. Per-prompt scores and the samples are returned too, for paired comparisons. `task`: a Task object
    to use instead of get_task(task_name)'s defaults (e.g. the task as a run's data was written)."""
    from ..train.engine import autocast
    from .judges import GoldJudge, ScoreJudge

    if bool(task_name) == bool(prompts_file):
        raise ConfigError("evaluate on a built-in task (--task) or on a prompts file (--prompts), one of the two")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_dir, run_cfg = resolve_model(path, task_name)
    if task is None and task_name:  # the task as the run's data was written (its task overrides included)
        from ..tasks.generate import task_of_data
        data_dir = ((run_cfg or {}).get("data") or {}).get("dir") or ""
        task = task_of_data(data_dir, task_name) if os.path.isdir(data_dir) else get_task(task_name)
    if reference is None:
        reference = default_reference(run_cfg, path)
    if judge == "gold" and task is None:
        raise ConfigError("--judge gold needs --task (a prompts file has no gold reward)")
    if judge == "reward" and not reward:
        raise ConfigError("--judge reward needs --reward (a reward run directory)")
    s = settings
    model, tok = load_eval_model(model_dir, device)
    counts: dict = {}
    prompts, refs = eval_prompts(task, prompts_file, prompts_format, s, tok, counts, prompts_columns)
    if s.max_new_tokens == 0:  # from the data on a prompts file; 24 on a task (its answers are short)
        n = 24 if task is not None else prompts_new_tokens(model, tok, refs, prompts_file, run_cfg, path)
        s = replace(s, max_new_tokens=n)
    gen = dict(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, device=device)
    with autocast(device, s.precision):
        completions = sample(model, tok, prompts, temperature=s.temperature, seed=s.seed, **gen)
    out: dict = {"model": model_dir, "task": task_name or None, "settings": asdict(s),
                 "length": M.mean_length(completions),
                 "distinct_1": M.distinct_n(completions, 1), "distinct_2": M.distinct_n(completions, 2)}
    per_prompt: dict = {}
    if task is not None:
        with autocast(device, s.precision):
            greedy = sample(model, tok, prompts, temperature=0.0, seed=s.seed, **gen)
        per_prompt["gold"] = [task.gold_reward(p, c) for p, c in zip(prompts, completions)]
        out["gold"] = {**_ci(per_prompt["gold"], s.seed), "max": task.max_gold}
        out["gold_greedy"] = sum(task.gold_reward(p, c) for p, c in zip(prompts, greedy)) / len(prompts)
    else:
        out["prompts"] = {"file": str(prompts_file), "format": prompts_format, "n": len(prompts),
                          "with_reference": sum(r is not None for r in refs), "in_file": counts.get("read"),
                          "duplicates": counts.get("duplicates")}
    if refs and all(r is not None for r in refs):  # every prompt has a reference answer
        out["rouge_l"] = M.rouge_l(completions, refs)
        out["bleu"] = M.bleu(completions, refs)
    score = None
    if reward:
        from ..train.rl import reward_source
        # no scale warning here: a trained policy may rightly score far above the SFT samples' mean 0
        score, _ = reward_source(reward, task, device, s.precision, check_scale=False)
        per_prompt["rm"] = score(prompts, completions).tolist()
        out["rm_score"] = {**_ci(per_prompt["rm"], s.seed), "reward": reward}
    if judge is None:
        judge = "gold" if task is not None else "reward" if reward else None
    if judge == "gold":
        judge = GoldJudge(task)
    elif judge == "reward":
        judge = ScoreJudge(lambda p, c: score(p, c).tolist())
    if reference:
        ref_model, ref_tok = load_eval_model(resolve_model(reference, task_name)[0], device)
        policy_lp = completion_logps(model, tok, prompts, completions, device, s.precision)
        ref_lp = completion_logps(ref_model, ref_tok, prompts, completions, device, s.precision)
        kl = (policy_lp - ref_lp).tolist()  # E_y~π[log π(y|x) − log π_ref(y|x)], one sample per prompt
        per_prompt["kl"] = kl
        out["kl_ref"] = {**_ci(kl, s.seed), "reference": reference}
        if judge is not None:
            with autocast(device, s.precision):
                ref_completions = sample(ref_model, ref_tok, prompts, temperature=s.temperature, seed=s.seed, **gen)
            per_prompt["win"] = judge.judge_many(prompts, completions, ref_completions)
            rate, lo, hi = M.win_rate(per_prompt["win"], seed=s.seed)
            out["win_rate"] = {"rate": rate, "low": lo, "high": hi, "judge": judge.name, "against": reference}
        del ref_model
    out["per_prompt"] = per_prompt
    out["samples"] = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    return out


def prompts_used(result: dict) -> str:
    """How many prompts an evaluation used, and why not all of the file's: '30 prompts (the file holds 40:
    10 repeat an earlier prompt and were dropped)'."""
    if "prompts" not in result:
        return f"{result['settings']['n_prompts']} prompts"
    p = result["prompts"]
    n, read, dup = p["n"], p.get("in_file"), p.get("duplicates") or 0
    if read is None or read == n:
        return f"{n} prompts"
    why = [f"{dup} repeat{'s' if dup == 1 else ''} an earlier prompt and {'was' if dup == 1 else 'were'} dropped"] \
        if dup else []
    if read - dup > n:
        why.append(f"n_prompts={result['settings']['n_prompts']} kept the first {n} distinct")
    return f"{n} prompts (the file holds {read}: {'; '.join(why)})"


def format_report(result: dict) -> str:
    where = f"task: {result['task']}" if result.get("task") else f"prompts: {result['prompts']['file']}"
    lines = [f"model: {result['model']}  {where}",
             f"  {prompts_used(result)}, up to {result['settings']['max_new_tokens']} new tokens each"]
    if "gold" in result:
        g = result["gold"]
        lines += [f"  gold reward          {g['mean']:.3f}  [95% CI {g['low']:.3f}, {g['high']:.3f}]  (max {g['max']})",
                  f"  gold, greedy         {result['gold_greedy']:.3f}"]
    else:
        lines.append("  gold reward          none: these prompts come from a file, not a built-in task")
    if "rm_score" in result:
        r = result["rm_score"]
        lines.append(f"  reward-model score   {r['mean']:.3f}  [95% CI {r['low']:.3f}, {r['high']:.3f}]")
    if "kl_ref" in result:
        k = result["kl_ref"]
        lines.append(f"  KL to reference      {k['mean']:.3f}  [{k['low']:.3f}, {k['high']:.3f}]  ({k['reference']})")
    if "win_rate" in result:
        w = result["win_rate"]
        lines.append(f"  win rate vs ref      {w['rate']:.3f}  [{w['low']:.3f}, {w['high']:.3f}]  judge: {w['judge']}")
    elif "kl_ref" in result:
        lines.append("  win rate vs ref      none: no judge (give --reward, or --judge chat --judge-url URL)")
    lines.append(f"  length               {result['length']['chars']:.1f} chars, {result['length']['words']:.1f} words")
    lines.append(f"  distinct-1 / -2      {result['distinct_1']:.3f} / {result['distinct_2']:.3f}")
    if "rouge_l" in result:
        lines.append(f"  ROUGE-L / BLEU       {result['rouge_l']:.3f} / {result['bleu']:.1f}")
    return "\n".join(lines)


def write_result(result: dict, out: str):
    """eval JSON (samples in a sibling .samples.jsonl), each written atomically; an --out that is a
    directory, or a disk that refuses the bytes, is a one-line error (diskio.DiskError), nothing left half."""
    if os.path.isdir(out):
        raise DiskError(f"--out {out}: is a directory; give the result file's name "
                        f"(e.g. {os.path.join(out, 'eval.json')})")
    make_dirs(os.path.dirname(os.path.abspath(out)), "cannot create the directory of --out")
    samples = result.get("samples", [])
    body = {k: v for k, v in result.items() if k != "samples"}
    atomic_write(out, lambda f: json.dump(body, f, indent=2), tmp=out + ".tmp")
    atomic_write(out.removesuffix(".json") + ".samples.jsonl",
                 lambda f: f.writelines(json.dumps(x) + "\n" for x in samples), tmp=out + ".tmp")
