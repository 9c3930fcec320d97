"""DPO and KTO training speed and memory: TRL's DPOTrainer / KTOTrainer against tinyrlhf's, in one run.

    make bench-dpo      (or: .venv-bench/bin/python benchmarks/bench_dpo.py [--quick] [--only dpo|kto])

Needs the separate benchmark venv (`make bench-dpo` creates .venv-bench with trl from
benchmarks/requirements-bench.txt); trl is never a dependency of tinyrlhf itself.

What is compared, and how (identical for both sides):
- Model: one random-init gpt2-small (the 124M shape, vocab 50257) saved once to a temp directory with
  tinyrlhf's BPE tokenizer (trained on the family_tree corpus); both trainers load that directory.
- Data: family_tree preference pairs (DPO) and binary labels (KTO) written by `write_task_data`, kept
  only where every prompt + completion + EOS is between max_length-16 and max_length (128) tokens, so
  neither side truncates and padding is small. Each run's file holds exactly the (warmup + timed) x
  batch examples it consumes (one epoch); both sides read the same file.
- The model directory holds GPT-2's stock config (activation "gelu_new"). tinyrlhf's loader swaps in the
  fused kernel of the same function ("gelu_pytorch_tanh"); TRL runs the directory as saved.
- Settings: batch 8 (pairs for DPO, labelled examples for KTO), no accumulation, bf16 autocast on
  CPU, beta 0.1, gradient checkpointing off on both (TRL's default is on: --gradient-checkpointing
  turns it on for both), full fine-tuning and LoRA (r 16, alpha 32, c_attn/c_proj/c_fc).
  Each trainer keeps its own optimizer implementation and its own reference-model handling.
- Each run is its own subprocess, with 1 torch thread by default (--threads; see its help). A global
  optimizer-step hook (torch) stamps the end of every optimizer step; time = end of the last warmup
  step -> end of the last timed step (data loading, loss, backward, clipping, optimizer and scheduler
  all inside; setup, tokenisation and the final save/eval outside). Peak RSS = the child's ru_maxrss
  at the end of the last timed step (model loading, reference model, dataset preparation and all
  steps included). The child then exits.
- Reference log-probs: TRL (default precompute_ref_log_probs=False) computes them inside every step;
  tinyrlhf computes them once before training (cached). That pass is timed in the child and charged
  to the timed window per example it covered (time / examples x timed examples), so both sides pay
  for one reference forward per example. The table shows the loop time and the charged share apart.
- Each side runs its own defaults beyond that: tinyrlhf its attention (model.attention=tinyrlhf: batched
  matmuls on CPU) where TRL runs transformers' SDPA, and with LoRA its frozen base in bf16
  (lora.bf16_base) where TRL keeps it fp32; both give the same results under bf16 autocast (tested).
- Prefix sharing: tinyrlhf (train.share_prompt, on by default) runs each prompt once and its completions
  (chosen + rejected; KTO's matched + mismatched) on the prompt's key/value cache; TRL runs every
  prompt+completion as its own row. Same log-probs and gradients (tests/test_grouped.py), less compute,
  and the saving grows with the prompt's share of the tokens (printed). --no-share-prompt turns it off.
- tokens/s = timed steps x batch x mean non-pad tokens per example of the training file (DPO:
  chosen + rejected sequences, KTO: the labelled sequence; KL/reference passes are not counted) /
  (loop time + charged reference share). Same formula both sides.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from child_process import child_env, run_subprocess, versions  # benchmarks/ is on sys.path (run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_SPEED, TARGET_RSS = 2.5, 0.6


# ---------------------------------------------------------------- child side

REFERENCE: dict = {}  # ours: time spent precomputing reference log-probs, and over how many examples


class StepClock:
    """Global optimizer post-step hook: stamps step ends; after the last timed step writes the result
    and ends the process (so the trainers' final save / evaluation never count)."""

    def __init__(self, warmup: int, steps: int, result_path: str):
        self.warmup, self.steps, self.result_path = warmup, steps, result_path
        self.stamps: list[float] = []

    def __call__(self, optimizer, args, kwargs):
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == self.warmup + self.steps:
            ends = self.stamps[self.warmup - 1:]
            step_times = [b - a for a, b in zip(ends, ends[1:])]
            result = {"seconds": ends[-1] - ends[0], "step_times": step_times,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **REFERENCE}
            with open(self.result_path, "w") as f:
                json.dump(result, f)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def child_main(side: str, method: str, spec_path: str, result_path: str):
    with open(spec_path) as f:
        spec = json.load(f)
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    register_optimizer_step_post_hook(StepClock(spec["warmup"], spec["steps"], result_path))
    if side == "trl":
        sys.path.insert(0, HERE)
        from dpo_kto_trl_child import run_trl
        run_trl(method, spec)
    else:
        run_ours(method, spec)
    print(f"error: the trainer stopped after fewer than {spec['warmup'] + spec['steps']} optimizer steps",
          file=sys.stderr)
    sys.exit(3)


def _timed_reference(module):
    """Wrap `module.reference_logps` to record the one-off reference pass (it runs before step 1, so it
    is outside the step window; the parent charges its cost per example to the timed steps)."""
    inner = module.reference_logps

    def wrapped(model, examples, *args, **kwargs):
        t = time.perf_counter()
        out = inner(model, examples, *args, **kwargs)
        REFERENCE["ref_seconds"] = REFERENCE.get("ref_seconds", 0.0) + time.perf_counter() - t
        REFERENCE.setdefault("ref_examples", len(examples))  # every call covers the same N training examples
        REFERENCE["rss_after_ref_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    module.reference_logps = wrapped


def run_ours(method: str, spec: dict):
    from tinyrlhf.config import load_config

    overrides = [f"model.path={spec['model_dir']}", f"data.dir={spec['data_dir']}",
                 f"out_dir={spec['out_dir']}", f"train.max_steps={spec['warmup'] + spec['steps']}",
                 f"train.batch_size={spec['batch']}", "train.grad_accum=1",
                 f"train.precision={spec['precision']}", "train.device=cpu", "train.progress=false",
                 "train.eval_every=0", "train.save_every=0", "train.log_every=1000",
                 f"train.threads={spec['threads']}", f"data.max_length={spec['max_length']}",
                 f"lora.enabled={str(spec['lora']).lower()}", "lora.r=16", "lora.alpha=32",
                 f"model.gradient_checkpointing={str(spec['gradient_checkpointing']).lower()}", "beta=0.1",
                 f"ref_cache_dir={spec['out_dir']}-ref_cache",
                 f"train.share_prompt={str(spec['share_prompt']).lower()}"]  # fresh per run: no cache hit across runs
    if method == "dpo":
        from tinyrlhf.config import PreferenceConfig
        from tinyrlhf.train import preference
        _timed_reference(preference)
        preference.run_preference(load_config(PreferenceConfig, None, overrides + ["loss=dpo"]))
    else:
        from tinyrlhf.config import KTOConfig
        from tinyrlhf.train import kto
        _timed_reference(kto)
        kto.run_kto(load_config(KTOConfig, None, overrides))


# ---------------------------------------------------------------- setup (parent)

def setup(workdir: str, max_length: int) -> dict:
    """The shared model directory and a pool of length-filtered records (with their token counts);
    reused if already in workdir (keyed by max_length)."""
    meta_path = os.path.join(workdir, f"setup-{max_length}.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            return json.load(f)
    import torch
    from tinyrlhf.config import ModelConfig
    from tinyrlhf.models import build_model, load_tokenizer, save_hf
    from tinyrlhf.tasks import get_task
    from tinyrlhf.tasks.generate import write_task_data

    t = time.time()
    model_dir, pool_dir, raw_dir = (os.path.join(workdir, d) for d in ("model", f"pool-{max_length}", "raw"))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        model, tok = build_model(ModelConfig(preset="gpt2-small"), get_task("family_tree").corpus(4000, 0))
        model.config.activation_function = "gelu_new"  # the stock GPT-2 config; tinyrlhf fuses it on load
        save_hf(model, tok, model_dir)
        del model
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_dir)
    tok = load_tokenizer(model_dir)
    # generations=4 makes family descriptions of ~150 tokens on average: enough fall in the window
    write_task_data("family_tree", raw_dir, seed=0, generations=4, n_train_prompts=2000, n_pairs=4000,
                    n_binary=4000, n_rankings=0, n_eval_prompts=10, n_eval_pairs=10)
    lo = max_length - 16
    n_tok = lambda p, c: len(tok(p, add_special_tokens=False)["input_ids"]) \
        + len(tok(c, add_special_tokens=False)["input_ids"]) + 1  # noqa: E731  (+1: EOS, both sides add it)
    os.makedirs(pool_dir, exist_ok=True)
    for name, comps in (("pairs.jsonl", ("chosen", "rejected")), ("binary.jsonl", ("completion",))):
        kept = []
        with open(os.path.join(raw_dir, name)) as f:
            for line in f:
                obj = json.loads(line)
                lens = [n_tok(obj["prompt"], obj[c]) for c in comps]
                if all(lo <= n <= max_length for n in lens):
                    kept.append(json.dumps({**obj, "meta": {**obj.get("meta", {}), "bench_tokens": sum(lens)}}) + "\n")
        with open(os.path.join(pool_dir, name), "w") as f:
            f.writelines(kept)
    shutil.copy(os.path.join(raw_dir, "manifest.json"), os.path.join(pool_dir, "manifest.json"))
    shutil.rmtree(raw_dir)
    meta = {"model_dir": model_dir, "pool_dir": pool_dir, "vocab": config.vocab_size,
            "layers": config.n_layer, "width": config.n_embd, "setup_s": time.time() - t,
            "torch_threads": torch.get_num_threads()}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


def cut_data(meta: dict, method: str, n: int, workdir: str) -> tuple[str, float, float]:
    """A data directory holding exactly the first `n` pool records of `method` (what the run consumes),
    their mean token count per example, and the share of those tokens that are prompt tokens."""
    name = "pairs.jsonl" if method == "dpo" else "binary.jsonl"
    with open(os.path.join(meta["pool_dir"], name)) as f:
        lines = f.readlines()
    if len(lines) < n:
        raise SystemExit(f"error: only {len(lines)} {name} records fit the length window; {n} needed "
                         "(fewer --steps or a smaller --batch)")
    out = os.path.join(workdir, f"data-{method}-{n}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.writelines(lines[:n])
    shutil.copy(os.path.join(meta["pool_dir"], "manifest.json"), os.path.join(out, "manifest.json"))
    from tinyrlhf.models import load_tokenizer
    tok = load_tokenizer(meta["model_dir"])
    records = [json.loads(x) for x in lines[:n]]
    per_example = statistics.fmean(r["meta"]["bench_tokens"] for r in records)
    seqs = 2 if method == "dpo" else 1
    prompt = statistics.fmean(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records)
    return out, per_example, seqs * prompt / per_example


# ---------------------------------------------------------------- parent

def ours_available(method: str) -> bool:
    import importlib.util
    mod = "tinyrlhf.train.preference" if method == "dpo" else "tinyrlhf.train.kto"
    return importlib.util.find_spec(mod) is not None


def run_child(side: str, method: str, spec: dict, workdir: str, tag: str, timeout: int) -> dict:
    spec_path = os.path.join(workdir, f"{tag}.spec.json")
    result_path = os.path.join(workdir, f"{tag}.result.json")
    log_path = os.path.join(workdir, f"{tag}.log")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = child_env(workdir)
    return run_subprocess(__file__, ["--child", side, "--method", method, "--spec", spec_path, "--result",
                                     result_path], env, log_path, result_path, tag, timeout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["dpo", "kto"], help="run one method (default: both)")
    ap.add_argument("--quick", action="store_true", help="DPO only, 1 warmup + 3 timed steps")
    ap.add_argument("--modes", default="full,lora", help="comma list of full,lora")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (>= 1)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="turn it on for both sides")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each child (0 = torch default). Default 1: on a shared 2-core machine, "
                         "2 threads competing with other work stall each other and step times swung 2-4x between "
                         "runs; 1 thread was stable. Use 0 or 2 on an idle machine.")
    ap.add_argument("--sides", default="trl,ours", help="comma list of trl,ours")
    ap.add_argument("--no-share-prompt", dest="share_prompt", action="store_false",
                    help="tinyrlhf: one prompt+completion row per sequence, as TRL does (no prefix sharing)")
    ap.add_argument("--workdir", help="keep the model, data and logs here (reused if set up already)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per trainer run")
    ap.add_argument("--child", choices=["trl", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args.child, args.method, args.spec, args.result)
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the clock starts at the end of the last warmup step)")

    methods = [args.only] if args.only else (["dpo"] if args.quick else ["dpo", "kto"])
    if args.quick:
        args.warmup, args.steps = 1, 3
    modes = [m for m in args.modes.split(",") if m]
    sides = [s for s in args.sides.split(",") if s]
    if not modes or set(modes) - {"full", "lora"}:
        ap.error(f"--modes takes a comma list of full,lora; got {args.modes!r}")
    if not sides or set(sides) - {"trl", "ours"}:
        ap.error(f"--sides takes a comma list of trl,ours; got {args.sides!r}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_dpo_")
    os.makedirs(workdir, exist_ok=True)
    t_all = time.time()
    print(versions())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {workdir}")
    meta = setup(workdir, args.max_length)
    n_examples = (args.warmup + args.steps) * args.batch
    data = {m: cut_data(meta, m, n_examples, workdir) for m in methods}
    print(f"setup {meta['setup_s']:.0f}s: random-init gpt2-small ({meta['layers']} layers x {meta['width']}, "
          f"vocab {meta['vocab']}, tinyrlhf BPE tokenizer); torch threads {args.threads or meta['torch_threads']}")
    print("data: family_tree, " + "; ".join(
        f"{m.upper()} {n_examples} {'pairs' if m == 'dpo' else 'binary examples'}, "
        f"{data[m][1]:.1f} tokens per {'pair (chosen + rejected)' if m == 'dpo' else 'example'} "
        f"({100 * data[m][2]:.0f}% prompt)" for m in methods))
    print(f"tinyrlhf prefix sharing (train.share_prompt): {'on' if args.share_prompt else 'off'}: each prompt "
          "runs once and its completions on its key/value cache, so the saving grows with the prompt share")
    print(f"batch {args.batch}, max_length {args.max_length}, {args.precision} autocast on CPU, "
          f"{args.warmup} warmup + {args.steps} timed optimizer steps per run, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'} (both sides)\n")

    results = {}
    for method in methods:
        for mode in modes:
            for side in sides:
                tag = f"{method}-{mode}-{side}"
                if side == "ours" and not ours_available(method):
                    print(f"  {tag}: skipped (tinyrlhf has no {method.upper()} trainer in this checkout yet)")
                    results[(method, mode, side)] = {"error": "not available"}
                    continue
                data_dir = data[method][0]
                spec = {"model_dir": meta["model_dir"], "data_dir": data_dir,
                        "train_file": os.path.join(data_dir, "pairs.jsonl" if method == "dpo" else "binary.jsonl"),
                        "out_dir": os.path.join(workdir, "runs", tag), "batch": args.batch,
                        "warmup": args.warmup, "steps": args.steps, "max_length": args.max_length,
                        "precision": args.precision, "lora": mode == "lora", "threads": args.threads,
                        "gradient_checkpointing": args.gradient_checkpointing,
                        "share_prompt": args.share_prompt}
                shutil.rmtree(spec["out_dir"], ignore_errors=True)
                shutil.rmtree(spec["out_dir"] + "-ref_cache", ignore_errors=True)
                load_before = os.getloadavg()[0]
                r = run_child(side, method, spec, workdir, tag, args.timeout)
                r["load"] = (load_before, os.getloadavg()[0])
                if "error" not in r:
                    n = args.steps * args.batch  # examples in the timed window
                    # a reference pass done once before training is charged per example it covered
                    r["ref_share_s"] = r.get("ref_seconds", 0.0) / r["ref_examples"] * n if "ref_examples" in r else 0.0
                    r["s_per_step"] = (r["seconds"] + r["ref_share_s"]) / args.steps
                    r["tokens_per_s"] = n * data[method][1] / (r["seconds"] + r["ref_share_s"])
                    extra = (f" (+ reference pass before training: {r['ref_seconds']:.1f}s for {r['ref_examples']} "
                             f"examples, {r['ref_share_s'] / args.steps:.2f} s/step charged; peak RSS when it "
                             f"ended {r['rss_after_ref_mib']:.0f} MiB)") if r["ref_share_s"] else ""
                    print(f"  {tag}: {r['seconds'] / args.steps:.2f} s/step in the loop{extra}; "
                          f"{r['tokens_per_s']:.0f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                          f"(child wall {r['wall_s']:.0f}s, 1-min load {r['load'][0]:.1f} -> {r['load'][1]:.1f})", flush=True)
                results[(method, mode, side)] = r

    loss_name = {"dpo": "dpo (sigmoid)", "kto": "kto"}
    side_name = {"trl": "TRL", "ours": "tinyrlhf"}
    print(f"\n{'trainer':9s} {'mode':5s} {'loss':14s} {'s/step':>7s} {'loop':>6s} {'ref':>5s} {'tokens/s':>9s} "
          f"{'peak RSS MiB':>12s}")
    for method in methods:
        for mode in modes:
            for side in sides:
                r = results[(method, mode, side)]
                label = f"{side_name[side]:9s} {mode:5s} {loss_name[method]:14s}"
                if "error" in r:
                    print(f"{label} {'-- ' + r['error']}")
                else:
                    print(f"{label} {r['s_per_step']:7.2f} {r['seconds'] / args.steps:6.2f} "
                          f"{r['ref_share_s'] / args.steps:5.2f} {r['tokens_per_s']:9.0f} {r['peak_rss_mib']:12.0f}")
    print("s/step = loop + ref: 'loop' is the mean optimizer-step time in the timed window; 'ref' is the "
          "share of a reference pass done once before training (tinyrlhf precomputes reference log-probs; "
          "TRL computes them inside each step, so its 'ref' is 0)")
    if "trl" in sides and "ours" in sides:
        print(f"\nratios tinyrlhf / TRL (targets: tokens/s >= {TARGET_SPEED}x, peak RSS <= {TARGET_RSS}x)")
        print(f"{'method':6s} {'mode':5s} {'tokens/s':>9s} {'loop only':>9s} {'peak RSS':>9s}  verdict")
        for method in methods:
            for mode in modes:
                a, b = results[(method, mode, "ours")], results[(method, mode, "trl")]
                if "error" in a or "error" in b:
                    print(f"{method:6s} {mode:5s} {'n/a':>9s} {'n/a':>9s} {'n/a':>9s}  (a run is missing)")
                    continue
                speed, rss = a["tokens_per_s"] / b["tokens_per_s"], a["peak_rss_mib"] / b["peak_rss_mib"]
                loop = b["seconds"] / a["seconds"]
                verdict = ("speed ok" if speed >= TARGET_SPEED else "speed MISSED") + ", " + \
                          ("memory ok" if rss <= TARGET_RSS else "memory MISSED")
                print(f"{method:6s} {mode:5s} {speed:8.2f}x {loop:8.2f}x {rss:8.2f}x  {verdict}")
    loads = [x for r in results.values() if "load" in r for x in r["load"]]
    if loads and max(loads) > (os.cpu_count() or 1) + 0.5:
        print(f"\nnote: the 1-min load average reached {max(loads):.1f} on {os.cpu_count()} CPUs: other work "
              "shared the cores, so absolute times are inflated and the ratios are noisier than on an idle machine.")
    print(f"\ntotal {time.time() - t_all:.0f}s. tokens/s = timed steps x batch x mean non-pad tokens per example "
          f"(same file both sides) / (time from the end of the last warmup optimizer step to the end of the last "
          f"timed one + the charged reference share); peak RSS = ru_maxrss of the trainer's own process at the "
          f"end of the last timed step.")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
