"""`tinyrlhf export`: a run's model as a self-contained Hugging Face directory with a model card.

    tinyrlhf export runs/family_tree/dpo --out exported/dpo --merge

The source is a run directory (its final/ is used), a final/ directory or any model directory. Written:
- a plain model (`--merge`, or any run trained without LoRA adapters): model.safetensors, config.json,
  generation_config.json and the tokenizer; LoRA adapters are merged into the weights, so
  transformers.AutoModelForCausalLM / AutoTokenizer load it with no peft and no base model;
- an adapter (an unmerged LoRA run without `--merge`): adapter_config.json naming the base by its
  absolute path, the adapter weights and the tokenizer (peft.AutoPeftModelForCausalLM loads it);
- a reward run's reward_head.safetensors / reward_head.json beside the trunk
  (tinyrlhf.models.load_reward_model loads it);
- README.md: a model card naming the base model, the stages that led to this model (following
  model.path through the runs' config.yaml), the run's config and the evaluation figures found
  (summary.json, eval-*.json).
A non-empty --out is refused unless --force; the export is written beside it and swapped in at the
end, so a failed export leaves --out as it was.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import yaml

from .diskio import disk_errors
from .errors import ConfigError
from .loading import (ADAPTER_CONFIG, BASE_FILE, HUB_NAME, adapter_base, check_model_dir, find_relative,
                      is_adapter_dir, load_causal_lm, weights_sha256)

REWARD_FILES = ("reward_head.safetensors", "reward_head.json")
SUMMARY_KEYS = ("gold/mean", "gold/greedy", "kl/ref", "eval/loss", "eval/accuracy", "eval/margin",
                "eval/accuracy_labels", "eval/accuracy_gold", "objective/scores", "steps")


def locate(source: str) -> tuple[str | None, str]:
    """(run directory or None, model directory) of a run dir, a run's final/ or a model dir."""
    if not os.path.isdir(source):
        raise ConfigError(f"'{source}': no such run or model directory")
    if os.path.isfile(os.path.join(source, "config.yaml")):
        model_dir = os.path.join(source, "final")
        if not os.path.isdir(model_dir):
            raise ConfigError(f"run '{source}' has no final/ model yet (unfinished run? run its command again)")
        return source, model_dir
    parent = os.path.dirname(os.path.abspath(source))
    return (parent if os.path.isfile(os.path.join(parent, "config.yaml")) else None), source


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e.__class__.__name__})") from None


def stage_of(cfg: dict) -> str:
    """The command that wrote a run's config.yaml, from the keys only that command has."""
    if cfg.get("stage"):
        return str(cfg["stage"])
    if "normalize_on" in cfg:
        return "reward"
    if "desirable_weight" in cfg:
        return "kto"
    if "algo" in cfg:
        return str(cfg["algo"])
    if "ppo" in cfg:
        return "ppo"
    if "rollout" in cfg and "loss" in cfg:
        return "online-dpo"
    if "orpo_lambda" in cfg:
        return str(cfg.get("loss", "dpo"))
    return "sft"


def lineage(run_dir: str | None, model_dir: str) -> list[dict]:
    """The stages that led to a model, oldest first: each {stage, run, config, started_from}; the first
    entry is the base (a model directory, or a random-init preset)."""
    chain: list[dict] = []
    seen: set[str] = set()
    while run_dir and os.path.abspath(run_dir) not in seen and len(seen) < 20:
        seen.add(os.path.abspath(run_dir))
        cfg = _read_yaml(os.path.join(run_dir, "config.yaml"))
        start = (cfg.get("model") or {}).get("path") or ""
        found = find_relative(start, run_dir) if start else None
        preset = f"random-init preset {(cfg.get('model') or {}).get('preset', '?')}"
        chain.append({"stage": stage_of(cfg), "run": run_dir, "config": cfg, "started_from": start or preset})
        if not start:
            chain.append({"stage": "base", "run": None, "config": None, "started_from": preset})
            return chain[::-1]
        if found is None:
            where = "a Hugging Face hub name" if HUB_NAME.fullmatch(start) else "not found here"
            chain.append({"stage": "base", "run": None, "config": None, "started_from": f"{start} ({where})"})
            return chain[::-1]
        run_dir, model_dir = locate(found)
    base = adapter_base(model_dir) if is_adapter_dir(model_dir) else model_dir
    chain.append({"stage": "base", "run": None, "config": None, "started_from": base})
    return chain[::-1]


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def prompts_evaluated(result: dict):
    """How many prompts an eval result scored: the length of its per-prompt scores, else the prompts file's
    count, else (older results) the n_prompts setting, which is only an upper bound."""
    per_prompt = result.get("per_prompt")
    if isinstance(per_prompt, dict) and per_prompt and isinstance(next(iter(per_prompt.values())), list):
        return len(next(iter(per_prompt.values())))
    if isinstance(result.get("prompts"), dict) and "n" in result["prompts"]:
        return result["prompts"]["n"]
    return f"up to {(result.get('settings') or {}).get('n_prompts', '?')}"


def prompt_format(model_dir: str) -> str:
    """The prompt format the model was trained on, as its tokenizer's chat template says (data/templates.py)."""
    from .data.templates import template_of
    from .models import load_tokenizer
    return {None: "none recorded (prompts as written)",
            "plain": "plain (prompts as written; the tokenizer's chat template joins chat turns by newlines)",
            "hh": "hh (`\\n\\nHuman: ...\\n\\nAssistant:`; the tokenizer's chat template renders it)",
            "tokenizer": "the tokenizer's own chat template"}[template_of(load_tokenizer(model_dir))]


def _read_summary(run_dir: str | None) -> dict:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        return summary if isinstance(summary, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def eval_figures(run_dir: str | None) -> list[str]:
    """Markdown lines with the figures of summary.json and every eval-*.json of a run."""
    if run_dir is None:
        return []
    lines = []
    summary_file = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary_file):
        try:
            with open(summary_file) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = {}
        found = [f"`{k}` {_number(summary[k])}" for k in SUMMARY_KEYS if k in summary]
        if found:
            lines.append("- training run (summary.json): " + ", ".join(found))
    for path in sorted(glob.glob(os.path.join(run_dir, "eval-*.json"))):
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        on = result.get("task") or (result.get("prompts") or {}).get("file", "?")
        parts = []
        for key, label in (("gold", "gold reward"), ("rm_score", "reward-model score"), ("kl_ref", "KL to reference")):
            if isinstance(result.get(key), dict) and "mean" in result[key]:
                r = result[key]
                parts.append(f"{label} {r['mean']:.3f} [95% CI {r['low']:.3f}, {r['high']:.3f}]")
        if isinstance(result.get("win_rate"), dict):
            w = result["win_rate"]
            parts.append(f"win rate {w['rate']:.3f} [{w['low']:.3f}, {w['high']:.3f}] vs {w.get('against')} "
                         f"(judge {w.get('judge')})")
        lines.append(f"- `tinyrlhf eval` on {on} ({prompts_evaluated(result)} prompts, {os.path.basename(path)}): "
                     + "; ".join(parts))
    return lines


def model_card(run_dir: str | None, model_dir: str, kind: str, reward: bool) -> str:
    chain = lineage(run_dir, model_dir)
    stages = [c["stage"] for c in chain if c["run"]]
    tags = ["tinyrlhf", *dict.fromkeys(stages), *(["lora"] if kind != "plain" else [])]
    out = ["---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
           "tags:", *[f"- {t}" for t in tags], "---", "",
           f"# {os.path.basename(os.path.abspath(run_dir or model_dir))}", "",
           f"A {'reward model' if reward else 'causal language model'} trained with tinyrlhf "
           f"({' → '.join(stages) or 'no training run found'}), exported by `tinyrlhf export` "
           + {"merged": "with its LoRA adapters merged into the weights.", "plain": "as a plain model directory.",
              "adapter": "as a LoRA adapter: the base model named in adapter_config.json is needed to load it."}[kind],
           "", f"Base model: `{chain[0]['started_from']}`", "", f"Prompt format: {prompt_format(model_dir)}", "",
           "## Stages", "",
           "| # | stage | run | started from | data | examples | steps |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, c in enumerate(chain[1:], 1):
        data, train = c["config"].get("data") or {}, c["config"].get("train") or {}
        source = data.get("train_file") or data.get("dataset") or \
            (f"task {data['task']}" if data.get("task") else data.get("dir", "?"))
        summary = _read_summary(c["run"])  # what the run did, not what its config asked (epochs, stop_after)
        examples = summary.get("data/train_records", "?")
        steps = summary.get("steps", train.get("max_steps", "?"))
        out.append(f"| {i} | {c['stage']} | `{c['run']}` | `{c['started_from']}` | {source} | {examples} | {steps} |")
    figures = eval_figures(run_dir)
    out += ["", "## Evaluation", "", *(figures or ["No evaluation figures were found in the run directory."])]
    out += ["", "## Loading", "", "```python"]
    if reward:
        out += ["from tinyrlhf.models import load_reward_model", "rm, tokenizer = load_reward_model(\"THIS_DIR\")"]
    elif kind == "adapter":
        out += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_DIR\")",
                "tokenizer = AutoTokenizer.from_pretrained(\"THIS_DIR\")"]
    else:
        out += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                "model = AutoModelForCausalLM.from_pretrained(\"THIS_DIR\")",
                "tokenizer = AutoTokenizer.from_pretrained(\"THIS_DIR\")"]
    out += ["```"]
    if chain[-1]["config"] is not None:
        out += ["", "## Training config", "", f"`{chain[-1]['run']}/config.yaml`:", "", "```yaml",
                yaml.safe_dump(chain[-1]["config"], sort_keys=False).rstrip(), "```"]
    return "\n".join(out) + "\n"


def _check_out(out: str, run_dir: str | None, model_dir: str, force: bool):
    target = os.path.abspath(out)
    inside = lambda a, b: a == b or a.startswith(b + os.sep)  # noqa: E731  (a is b or lies under b)
    model = os.path.abspath(model_dir)
    if inside(target, model) or inside(model, target) or (run_dir and inside(os.path.abspath(run_dir), target)):
        raise ConfigError(f"--out '{out}' overlaps the model being exported ('{model_dir}'); choose another directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out '{out}' is a file, not a directory")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise ConfigError(f"--out '{out}' is not empty; pass --force to replace it (nothing was written)")


def _write(model_dir: str, tmp: str, final_out: str, merge: bool) -> str:
    """Write the model files into `tmp` (renamed to `final_out` at the end); returns what was written:
    merged, plain or adapter."""
    from .models import load_tokenizer
    tokenizer = load_tokenizer(model_dir)
    os.makedirs(tmp)
    if is_adapter_dir(model_dir) and not merge:
        base = os.path.abspath(adapter_base(model_dir))
        sha = weights_sha256(base)
        with open(os.path.join(model_dir, ADAPTER_CONFIG)) as f:
            adapter_cfg = json.load(f)
        if base.startswith(os.path.abspath(model_dir) + os.sep):  # the base lives in final/base: take it along
            shutil.copytree(base, os.path.join(tmp, "base"))
            base = os.path.join(final_out, "base")
        adapter_cfg["base_model_name_or_path"] = base
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(adapter_cfg, f, indent=2)
        for name in os.listdir(model_dir):
            if name.startswith("adapter_model."):
                shutil.copy2(os.path.join(model_dir, name), tmp)
        with open(os.path.join(tmp, BASE_FILE), "w") as f:
            json.dump({"base_model": base, "relative": os.path.relpath(base, final_out), "weights_sha256": sha},
                      f, indent=2)
        tokenizer.save_pretrained(tmp)
        return "adapter"
    model = load_causal_lm(model_dir)  # adapters merged in memory; a plain model as it is
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)  # model.safetensors, config.json, generation_config.json
    tokenizer.save_pretrained(tmp)
    return "merged" if is_adapter_dir(model_dir) else "plain"


def export_model(source: str, out: str, *, merge: bool = False, force: bool = False) -> dict:
    """Export `source` (a run dir, a final/ or a model dir) to `out`; returns {out, kind, files}."""
    run_dir, model_dir = locate(source)
    check_model_dir(model_dir)
    _check_out(out, run_dir, model_dir, force)
    reward = all(os.path.isfile(os.path.join(model_dir, f)) for f in REWARD_FILES)
    out = os.path.abspath(out)
    tmp, old = f"{out}.tmp-{os.getpid()}", f"{out}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with disk_errors("could not export to", out, after="nothing was changed there"):
        kind = _publish(model_dir, tmp, old, out, merge, reward, run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return {"out": out, "kind": kind, "reward_model": reward, "files": sorted(os.listdir(out))}


def _publish(model_dir: str, tmp: str, old: str, out: str, merge: bool, reward: bool, run_dir) -> str:
    """Write the export into `tmp`, then rename it to `out` (the previous `out` aside to `old`, put back
    when anything fails); returns what was written."""
    try:
        kind = _write(model_dir, tmp, out, merge)
        if reward:
            for name in REWARD_FILES:
                shutil.copy2(os.path.join(model_dir, name), tmp)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(run_dir, model_dir, kind, reward))
        if os.path.isdir(out):
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(old) and not os.path.exists(out):  # put the previous export back
            os.replace(old, out)
        raise
    return kind

