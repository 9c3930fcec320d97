"""PPO speed and memory: TRL's experimental PPOTrainer (trl 1.12) against tinyrlhf's run_ppo, in one run.

    make bench-ppo      (or: .venv-bench-ppo/bin/python benchmarks/bench_ppo.py [--quick] [--presets ...])

Needs the separate benchmark venv (`make bench-ppo` creates .venv-bench-ppo with trl 1.12 from
benchmarks/requirements-bench-ppo.txt: the last TRL release that has PPO); trl is never a dependency
of tinyrlhf itself.

What is compared, and how (identical for both sides):
- Models, saved once per preset to a temp directory and loaded by both trainers: a random-init policy
  (GPT-2 shape of tinyrlhf.models.PRESETS[preset], tinyrlhf's BPE tokenizer trained on the family_tree
  corpus) and a random-init reward model (another seed) written twice with the same weights: for
  tinyrlhf by save_reward_model(RewardModel(lm)) (head bias 0, gain 1, bias 0), for TRL as an
  AutoModelForSequenceClassification(num_labels=1) directory holding the same trunk and head weights
  (checked: both give the same score on a test input; tinyrlhf scores the decoded text re-tokenised
  with EOS appended, TRL the sampled ids). The reference is a frozen copy of the policy
  (with LoRA: none on either side, the adapters are disabled instead).
- Value model: TRL's is a separate critic initialised from the reward model, as its PPO example does.
  tinyrlhf runs twice: ppo.value_model=separate (its critic is also a copy of the reward model's
  trunk: the same setup as TRL) and ppo.value_model=shared (a value head on the policy's trunk, our
  default). Full fine-tuning and LoRA (r 16, alpha 32, c_attn/c_proj/c_fc; the critic stays a full
  trainable copy on TRL and on our `separate`).
- Prompts: family_tree train prompts cut to their last --prompt-tokens tokens (kept only where the
  cut text re-tokenises to exactly those tokens), so every prompt has the same length and neither side
  pads or truncates; each run's file holds exactly (warmup + timed) x batch prompts, both sides read
  it (each samples the prompts in its own shuffled order).
- Settings: rollout batch --batch prompts (default 16 for gpt2-tiny, 8 for gpt2-small), one response
  each, exactly --response-tokens new tokens (random-init models almost never emit EOS: TRL runs with
  stop_token None and generates the full length always; tinyrlhf stops a row at EOS, which shortens
  nothing here but a rare row), temperature 1, no missing-EOS penalty (TRL's default None; ours 0),
  fixed KL coefficient 0.05 (k1), 4 PPO epochs over one minibatch = the whole batch (TRL
  num_mini_batches 1, no accumulation; ours ppo.minibatch_size = train.batch_size = batch), so 4
  optimizer steps per rollout batch on both; no early stop, no reward whitening, advantages whitened,
  clip 0.2 / value clip 0.2 / vf_coef 0.1 / gamma 1 / lambda 0.95, lr 3e-6 AdamW, gradient
  checkpointing off on both (TRL's default is on: --gradient-checkpointing turns it on for both).
  Ours clips the gradient norm at 1 (TRL's PPO never clips); each trainer keeps its own optimizer.
- Precision (--precision, default fp32): fp32 on both, because TRL's PPOTrainer ignores bf16=True (it
  builds its own `Accelerator()` without mixed_precision; checked: accelerator.mixed_precision == "no").
  --precision bf16 gives TRL bf16=True plus ACCELERATE_MIXED_PRECISION=bf16, which makes accelerate
  autocast the policy+value wrapper's forward, i.e. TRL's PPO update only (its generation, reference,
  reward and old-value passes call the submodules directly and stay fp32); tinyrlhf autocasts every
  pass (train.precision=bf16). --ours-precision bf16 runs tinyrlhf at bf16 while TRL stays at
  --precision (each trainer at the precision it actually runs); not an equal-precision comparison, and
  the header says so.
- Each run is its own subprocess, with 1 torch thread by default (--threads). A global optimizer-step
  hook (torch) counts optimizer steps; every `epochs`-th one ends a rollout batch. Time = end of the
  last warmup batch -> end of the last timed batch (rollout, scoring, reference, values, GAE, the PPO
  epochs and each trainer's own per-batch bookkeeping all inside; setup and the final save/eval
  outside: the child exits there). episodes/s = timed batches x batch / time. Peak RSS = the child's
  ru_maxrss at the end of the last timed batch (imports, model loading and all batches included).
- Where the time goes: both sides' helpers are wrapped with timers (generation, reward model,
  reference log-probs, values / old log-probs, the PPO epochs' forwards) and global optimizer pre/post
  step hooks time optimizer.step(); 'bwd+rest' is what remains of a step (backward, losses, gradient
  clipping, GAE, bookkeeping). Summed over the timed batches only. Memory: RSS when the first rollout
  starts (all models built; TRL's from_pretrained weights may not all be resident yet) and the
  anonymous / file-backed split at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

from child_process import child_env, run_subprocess, versions  # benchmarks/ is on sys.path (run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_SPEED, TARGET_RSS = 3.0, 0.5
DEFAULT_BATCH = {"gpt2-tiny": 16, "gpt2-small": 8}
DEFAULT_STEPS = {"gpt2-tiny": (2, 8), "gpt2-small": (1, 3)}  # (warmup, timed) rollout batches
QUICK_STEPS = {"gpt2-tiny": (1, 4), "gpt2-small": (1, 2)}


# ---------------------------------------------------------------- child side

def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now() -> dict:
    """Resident memory now, anonymous (tensors, heap) and file-backed (mapped libraries and weights)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    out[line.split(":")[0].lower() + "_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


class Phases:
    """Seconds per labelled rollout phase (summed), and the peak RSS when the first rollout starts."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.rss_before_rollout: float | None = None

    def add(self, label: str, dt: float):
        self.seconds[label] = self.seconds.get(label, 0.0) + dt

    def first_rollout(self):
        if self.rss_before_rollout is None:
            self.rss_before_rollout = _rss_mib()


class RolloutClock:
    """Global optimizer post-step hook: every `per_batch`-th optimizer step ends a rollout batch. Stamps
    batch ends; after the last timed batch writes the result and ends the process (so the trainers'
    final save / evaluation never count)."""

    def __init__(self, per_batch: int, warmup: int, steps: int, result_path: str, phases: Phases):
        self.per_batch, self.warmup, self.steps = per_batch, warmup, steps
        self.result_path, self.phases = result_path, phases
        self.n_opt = 0
        self.stamps: list[float] = []
        self.phases_at_warmup: dict[str, float] = {}
        self.t_opt = 0.0

    def before_step(self, optimizer, args, kwargs):
        self.t_opt = time.perf_counter()

    def __call__(self, optimizer, args, kwargs):
        self.phases.add("optimizer", time.perf_counter() - self.t_opt)
        self.n_opt += 1
        if self.n_opt % self.per_batch:
            return
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == self.warmup:
            self.phases_at_warmup = dict(self.phases.seconds)
        if len(self.stamps) == self.warmup + self.steps:
            import torch
            ends = self.stamps[self.warmup - 1:]
            phases = {k: v - self.phases_at_warmup.get(k, 0.0) for k, v in self.phases.seconds.items()}
            result = {"seconds": ends[-1] - ends[0], "step_times": [b - a for a, b in zip(ends, ends[1:])],
                      "peak_rss_mib": _rss_mib(), "rss_before_rollout_mib": self.phases.rss_before_rollout,
                      "phases": phases, "torch_threads": torch.get_num_threads(), **_rss_now()}
            with open(self.result_path, "w") as f:
                json.dump(result, f)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def child_main(side: str, spec_path: str, result_path: str):
    with open(spec_path) as f:
        spec = json.load(f)
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    phases = Phases()
    clock = RolloutClock(spec["epochs"], spec["warmup"], spec["steps"], result_path, phases)
    register_optimizer_step_pre_hook(clock.before_step)
    register_optimizer_step_post_hook(clock)
    if side == "trl":
        sys.path.insert(0, HERE)
        from ppo_trl_child import run_trl
        run_trl(spec, phases)
    else:
        sys.path.insert(0, HERE)
        from ppo_tinyrlhf_child import run_ours
        run_ours(spec, phases)
    print(f"error: the trainer stopped after fewer than {spec['warmup'] + spec['steps']} rollout batches",
          file=sys.stderr)
    sys.exit(3)


# ---------------------------------------------------------------- setup (parent)

def setup(workdir: str, preset: str, prompt_tokens: int) -> dict:
    """Policy dir, the reward model in both formats, and a pool of same-length prompts for `preset`;
    reused if already in workdir."""
    meta_path = os.path.join(workdir, f"setup-{preset}-{prompt_tokens}.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tinyrlhf.config import ModelConfig
    from tinyrlhf.models import RewardModel, build_model, save_hf, save_reward_model
    from tinyrlhf.tasks import get_task
    from tinyrlhf.tasks.generate import write_task_data

    t = time.time()
    policy_dir, ours_rm, trl_rm = (os.path.join(workdir, preset, d) for d in ("policy", "reward-ours", "reward-trl"))
    policy, tok = build_model(ModelConfig(preset=preset), get_task("family_tree").corpus(4000, 0), seed=0)
    policy.config.activation_function = "gelu_new"  # the stock GPT-2 config; tinyrlhf fuses it on load
    save_hf(policy, tok, policy_dir)
    torch.manual_seed(1)  # the reward model: the same shape, other random weights
    rm = RewardModel(AutoModelForCausalLM.from_config(policy.config)).eval()
    save_reward_model(rm, tok, ours_rm)
    seq = AutoModelForSequenceClassification.from_pretrained(ours_rm, num_labels=1, dtype=torch.float32).eval()
    with torch.no_grad():
        seq.score.weight.copy_(rm.head.weight)  # GPT-2's score has no bias; ours is 0
    seq.config.pad_token_id = tok.pad_token_id
    seq.save_pretrained(trl_rm)
    tok.save_pretrained(trl_rm)
    ids = torch.randint(1, len(tok), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = rm(ids, torch.ones_like(ids)), seq(input_ids=ids).logits.squeeze(-1)
    if not torch.allclose(a, b, atol=1e-5):
        raise SystemExit(f"error: the two reward-model directories disagree ({a.tolist()} vs {b.tolist()})")
    del policy, rm, seq

    # Prompts: the last `prompt_tokens` tokens of each family_tree train prompt, where they round-trip.
    raw = os.path.join(workdir, preset, "raw")
    write_task_data("family_tree", raw, seed=0, n_train_prompts=2000, n_eval_prompts=10, n_pairs=10,
                    n_rankings=0, n_binary=10, n_eval_pairs=10)
    kept = []
    with open(os.path.join(raw, "sft.jsonl")) as f:
        for line in f:
            obj = json.loads(line)
            p_ids = tok(obj["prompt"], add_special_tokens=False)["input_ids"]
            if len(p_ids) < prompt_tokens:
                continue
            text = tok.decode(p_ids[-prompt_tokens:])
            if tok(text, add_special_tokens=False)["input_ids"] == p_ids[-prompt_tokens:]:
                kept.append({"prompt": text, "completion": obj["completion"]})
    pool = os.path.join(workdir, preset, "pool")
    os.makedirs(pool, exist_ok=True)
    with open(os.path.join(pool, "sft.jsonl"), "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in kept)
    shutil.copy(os.path.join(raw, "manifest.json"), os.path.join(pool, "manifest.json"))
    shutil.rmtree(raw)
    config = AutoModelForCausalLM.from_pretrained(policy_dir).config
    meta = {"policy_dir": policy_dir, "ours_reward_dir": ours_rm, "trl_reward_dir": trl_rm, "pool_dir": pool,
            "pool_size": len(kept), "vocab": config.vocab_size, "layers": config.n_layer, "width": config.n_embd,
            "params_m": sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) / 1e6,
            "setup_s": time.time() - t}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


def cut_prompts(meta: dict, n: int, workdir: str, preset: str) -> str:
    """A data directory whose sft.jsonl holds exactly the first `n` pool prompts (what a run consumes)."""
    with open(os.path.join(meta["pool_dir"], "sft.jsonl")) as f:
        lines = f.readlines()
    if len(lines) < n:
        raise SystemExit(f"error: only {len(lines)} prompts of {preset} round-trip at this length; {n} needed "
                         "(fewer --steps, a smaller --batch or fewer --prompt-tokens)")
    out = os.path.join(workdir, preset, f"data-{n}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sft.jsonl"), "w") as f:
        f.writelines(lines[:n])
    shutil.copy(os.path.join(meta["pool_dir"], "manifest.json"), os.path.join(out, "manifest.json"))
    return out


# ---------------------------------------------------------------- parent

def run_child(side: str, spec: dict, workdir: str, tag: str, timeout: int) -> dict:
    spec_path, result_path, log_path = (os.path.join(workdir, f"{tag}.{x}")
                                        for x in ("spec.json", "result.json", "log"))
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = child_env(workdir, TRL_EXPERIMENTAL_SILENCE="1")
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    if side == "trl" and spec["precision"] == "bf16":
        # TRL's PPOTrainer builds its Accelerator() itself: bf16=True alone is ignored
        env["ACCELERATE_MIXED_PRECISION"] = "bf16"
    return run_subprocess(__file__, ["--child", side, "--spec", spec_path, "--result", result_path], env,
                          log_path, result_path, tag, timeout)


PHASES = ("generate", "reward", "reference", "value|old", "upd fwd", "optimizer", "bwd+rest")


def phase_row(r: dict, steps: int) -> list[float]:
    """Seconds per rollout batch in each phase; 'value|old' is TRL's critic pass or our old log-probs +
    values pass; 'upd fwd' the PPO epochs' forwards (policy + value), 'optimizer' the optimizer steps,
    'bwd+rest' the rest of the step (backward, loss, clipping, GAE, bookkeeping)."""
    p = r["phases"]
    vals = [p.get("generate", 0.0), p.get("reward", 0.0), p.get("reference", 0.0),
            p.get("value", 0.0) + p.get("old logprobs+values", 0.0), p.get("update forward", 0.0),
            p.get("optimizer", 0.0)]
    return [v / steps for v in vals] + [(r["seconds"] - sum(vals)) / steps]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="gpt2-tiny,gpt2-small", help="comma list of gpt2-tiny,gpt2-small")
    ap.add_argument("--modes", default="full,lora", help="comma list of full,lora")
    ap.add_argument("--runs", default="trl,ours-separate,ours-shared",
                    help="comma list of trl,ours-separate,ours-shared (ours-<ppo.value_model>)")
    ap.add_argument("--quick", action="store_true", help="full fine-tuning only, fewer rollout batches")
    ap.add_argument("--batch", type=int, help="prompts per rollout batch (default 16 for gpt2-tiny, 8 for gpt2-small)")
    ap.add_argument("--warmup", type=int, help="untimed rollout batches first (>= 1; default 2 tiny, 1 small)")
    ap.add_argument("--steps", type=int, help="timed rollout batches (default 8 tiny, 3 small)")
    ap.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout batch (one minibatch each)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--response-tokens", type=int, default=24)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="fp32",
                    help="fp32 on both (default: TRL's PPOTrainer ignores bf16=True), or bf16 (see the docstring)")
    ap.add_argument("--ours-precision", choices=["bf16", "fp32"],
                    help="run tinyrlhf at this precision instead of --precision (e.g. bf16, its default on this "
                         "CPU, against TRL at fp32, what its PPOTrainer runs even when asked for bf16). NOT an "
                         "equal-precision comparison: the output says so")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="turn it on for both sides")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each child (0 = torch default). Default 1: the machine is shared; "
                         "1 thread per run, runs one after the other, keeps the ratios stable.")
    ap.add_argument("--workdir", help="keep the models, data and logs here (reused if set up already)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per trainer run")
    ap.add_argument("--child", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args.child, args.spec, args.result)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers
    transformers.logging.set_verbosity_error()  # setup's load reports (score.weight is set by hand)
    transformers.logging.disable_progress_bar()

    presets = [p for p in args.presets.split(",") if p]
    modes = ["full"] if args.quick else [m for m in args.modes.split(",") if m]
    runs = [r for r in args.runs.split(",") if r]
    if not presets or set(presets) - set(DEFAULT_BATCH):
        ap.error(f"--presets takes a comma list of {','.join(DEFAULT_BATCH)}; got {args.presets!r}")
    if not modes or set(modes) - {"full", "lora"}:
        ap.error(f"--modes takes a comma list of full,lora; got {args.modes!r}")
    if not runs or set(runs) - {"trl", "ours-separate", "ours-shared"}:
        ap.error(f"--runs takes a comma list of trl,ours-separate,ours-shared; got {args.runs!r}")
    if args.warmup is not None and args.warmup < 1:
        ap.error("--warmup must be >= 1 (the clock starts at the end of the last warmup batch)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_ppo_")
    os.makedirs(workdir, exist_ok=True)
    t_all = time.time()
    print(versions())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {workdir}")
    how = "TRL: autocast on its PPO update only, see the docstring" if args.precision == "bf16" else "both sides"
    if args.ours_precision and args.ours_precision != args.precision:
        how = f"TRL; tinyrlhf runs {args.ours_precision}: NOT an equal-precision comparison"
    print(f"{args.precision} ({how}), "
          f"torch threads {args.threads or 'default'}, {args.prompt_tokens} prompt tokens + {args.response_tokens} "
          f"response tokens, {args.epochs} PPO epochs x 1 minibatch per rollout batch, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'} (both sides)\n")

    results, plan = {}, {}
    for preset in presets:
        warmup, steps = (QUICK_STEPS if args.quick else DEFAULT_STEPS)[preset]
        warmup, steps = args.warmup or warmup, args.steps or steps
        batch = args.batch or DEFAULT_BATCH[preset]
        plan[preset] = (warmup, steps, batch)
        meta = setup(workdir, preset, args.prompt_tokens)
        data_dir = cut_prompts(meta, (warmup + steps) * batch, workdir, preset)
        print(f"{preset}: {meta['layers']} layers x {meta['width']}, vocab {meta['vocab']}, {meta['params_m']:.1f}M "
              f"params per model (setup {meta['setup_s']:.0f}s); batch {batch}, {warmup} warmup + {steps} timed "
              f"rollout batches per run; {(warmup + steps) * batch} of {meta['pool_size']} same-length prompts")
        for mode in modes:
            for run in runs:
                side, _, value = run.partition("-")
                tag = f"{preset}-{mode}-{run}"
                spec = {"policy_dir": meta["policy_dir"], "ours_reward_dir": meta["ours_reward_dir"],
                        "trl_reward_dir": meta["trl_reward_dir"], "data_dir": data_dir,
                        "prompts_file": os.path.join(data_dir, "sft.jsonl"),
                        "out_dir": os.path.join(workdir, "runs", tag),
                        "batch": batch, "warmup": warmup, "steps": steps, "epochs": args.epochs,
                        "prompt_tokens": args.prompt_tokens, "response_tokens": args.response_tokens,
                        "precision": (args.ours_precision or args.precision) if side == "ours" else args.precision,
                        "lora": mode == "lora", "value": value or "separate",
                        "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing}
                shutil.rmtree(spec["out_dir"], ignore_errors=True)
                load_before = os.getloadavg()[0]
                r = run_child(side, spec, workdir, tag, args.timeout)
                r["load"] = (load_before, os.getloadavg()[0])
                if "error" not in r:
                    r["episodes_per_s"] = steps * batch / r["seconds"]
                    print(f"  {tag}: {r['seconds'] / steps:.2f} s/batch, {r['episodes_per_s']:.2f} episodes/s, "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['rss_before_rollout_mib']:.0f} before the first "
                          f"rollout; at the "
                          f"end {r.get('rssanon_mib', 0):.0f} anon + {r.get('rssfile_mib', 0):.0f} file); "
                          f"child wall {r['wall_s']:.0f}s, {r['torch_threads']} thread(s), 1-min load "
                          f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)
                results[(preset, mode, run)] = r

    name = {"trl": "TRL", "ours-separate": "tinyrlhf", "ours-shared": "tinyrlhf"}
    print(f"\n{'preset':10s} {'mode':5s} {'trainer':9s} {'value':8s} {'s/batch':>7s} {'episodes/s':>10s} "
          f"{'peak RSS MiB':>12s}")
    for preset in presets:
        for mode in modes:
            for run in runs:
                r = results[(preset, mode, run)]
                label = f"{preset:10s} {mode:5s} {name[run]:9s} {('separate' if run == 'trl' else run[5:]):8s}"
                if "error" in r:
                    print(f"{label} -- {r['error']}")
                else:
                    print(f"{label} {r['seconds'] / plan[preset][1]:7.2f} {r['episodes_per_s']:10.2f} "
                          f"{r['peak_rss_mib']:12.0f}")

    if "trl" in runs and len(runs) > 1:
        print(f"\nratios tinyrlhf / TRL (targets: episodes/s >= {TARGET_SPEED}x, peak RSS <= {TARGET_RSS}x)")
        print(f"{'preset':10s} {'mode':5s} {'ours value':10s} {'episodes/s':>10s} {'peak RSS':>9s}  verdict")
        for preset in presets:
            for mode in modes:
                b = results[(preset, mode, "trl")]
                for run in runs:
                    if run == "trl":
                        continue
                    a = results[(preset, mode, run)]
                    if "error" in a or "error" in b:
                        print(f"{preset:10s} {mode:5s} {run[5:]:10s} {'n/a':>10s} {'n/a':>9s}  (a run is missing)")
                        continue
                    speed, rss = a["episodes_per_s"] / b["episodes_per_s"], a["peak_rss_mib"] / b["peak_rss_mib"]
                    verdict = ("speed ok" if speed >= TARGET_SPEED else "speed MISSED") + ", " + \
                              ("memory ok" if rss <= TARGET_RSS else "memory MISSED")
                    print(f"{preset:10s} {mode:5s} {run[5:]:10s} {speed:9.2f}x {rss:8.2f}x  {verdict}")

    print(f"\nwhere the time goes, seconds per rollout batch ({' | '.join(PHASES)}):")
    print(f"{'preset':10s} {'mode':5s} {'run':14s} " + " ".join(f"{p:>9s}" for p in PHASES))
    for preset in presets:
        for mode in modes:
            for run in runs:
                r = results[(preset, mode, run)]
                if "error" not in r:
                    cells = " ".join(f"{v:9.3f}" for v in phase_row(r, plan[preset][1]))
                    print(f"{preset:10s} {mode:5s} {run:14s} {cells}")
    print("value|old: TRL's critic pass over the rollout (its old log-probs come from the sampling logits); ours: "
          "one no-grad pass giving old log-probs and values (shared: one trunk; separate: policy + critic). "
          "upd fwd: the PPO epochs' policy+value forwards; optimizer: optimizer.step(); bwd+rest: the rest of "
          "the step (backward, losses, gradient clipping, GAE, each trainer's bookkeeping).")
    loads = [x for r in results.values() if "load" in r for x in r["load"]]
    if loads and max(loads) > (os.cpu_count() or 1) + 0.5:
        print(f"\nnote: the 1-min load average reached {max(loads):.1f} on {os.cpu_count()} CPUs: other work "
              "shared the cores, so absolute times are inflated and the ratios are noisier than on an idle machine.")
    print(f"\ntotal {time.time() - t_all:.0f}s. episodes/s = timed rollout batches x batch / (time from the end of "
          "the last warmup batch to the end of the last timed one, batch ends = every epochs-th optimizer step); "
          "peak RSS = ru_maxrss of the trainer's own process at the end of the last timed batch.")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
