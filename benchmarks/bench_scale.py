"""Scaling across processes: SFT and DPO tokens/s and PPO episodes/s at 1, 2, ... ranks (torchrun, DDP).

    .venv/bin/python benchmarks/bench_scale.py                      # CPU, gloo: 1 and 2 ranks x 1 thread
    .venv/bin/python benchmarks/bench_scale.py --device cuda --nprocs 1,2,4 --preset gpt2-small

Every rank count runs the same stages with the same GLOBAL batch (train.batch_size, rollout.prompts_per_step),
through the real CLI under `torchrun --standalone` (one rank = the plain single-process path), and reads the
throughput the run itself reports in summary.json (global tokens or episodes over rank 0's training time;
model loading, the reference pass and evaluation are not counted). Scaling efficiency at n ranks =
throughput(n) / (n * throughput(1)). The task data and the SFT model the stages start from are made first
(untimed). On a CPU each rank gets `--threads` threads: ranks x threads should not exceed the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

STAGES = {  # stage: (CLI command, its options beyond the common ones, the summary's throughput key)
    "sft": ("sft", ["train.batch_size=16"], "tokens_per_s"),
    # (max_train: the reference pass before training covers only the pairs the run trains on)
    "dpo": ("dpo", ["train.batch_size=16", "loss=dpo", "data.max_train=512"], "tokens_per_s"),
    "ppo": ("ppo", ["reward=gold", "rollout.prompts_per_step=16", "rollout.max_new_tokens=16",
                    "ppo.minibatch_size=8", "ppo.epochs=2", "train.batch_size=8"], "episodes_per_s"),
}


def run(cmd: list[str], log: str, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}\n" + open(log).read()[-3000:])
    return time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nprocs", default="1,2", help="rank counts to measure (comma-separated)")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    ap.add_argument("--preset", default="gpt2-mini", help="model size (a tinyrlhf preset, random init)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--steps", type=int, default=0, help="steps per stage (0: 30 SFT/DPO, 6 PPO)")
    ap.add_argument("--stages", default="sft,dpo,ppo")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--work", default="", help="working directory (default: a temporary one)")
    args = ap.parse_args()
    nprocs = [int(n) for n in args.nprocs.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="bench_scale-")
    os.makedirs(work, exist_ok=True)
    py = sys.executable
    precision = "fp32" if args.device == "cpu" else "bf16"
    common = ["data.task=family_tree", f"data.dir={work}/data", f"train.threads={args.threads}",
              f"train.device={args.device}", f"train.precision={precision}", "train.progress=false",
              "eval.n_prompts=0", "train.eval_every=0", "train.save_every=0", "train.save_minutes=0",
              "train.log_every=10"]

    print(f"# bench_scale: {args.preset}, device {args.device}, {args.threads} thread(s) per rank, work dir {work}",
          flush=True)
    # 1. The starting point every stage shares: task data and a short SFT (untimed).
    sft_base = f"{work}/base"
    if not os.path.isfile(f"{sft_base}/summary.json"):
        run([py, "-m", "tinyrlhf", "sft", f"out_dir={sft_base}", f"model.preset={args.preset}",
             "train.max_steps=40", "train.batch_size=16", *common],
            f"{work}/base.log", args.threads)
    model = f"{sft_base}/final"

    results = []
    for stage in args.stages.split(","):
        command, extra, key = STAGES[stage]
        steps = args.steps or (6 if stage == "ppo" else 30)
        base = None
        for n in nprocs:
            out = f"{work}/{stage}-n{n}"
            cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "tinyrlhf",
                   command, f"out_dir={out}", f"model.path={model}", f"train.max_steps={steps}",
                   "train.warmup_steps=1", *common, *extra]
            if stage == "dpo":  # every rank count computes the reference itself (not a cache hit)
                cmd.append(f"ref_cache_dir={work}/refcache-n{n}")
            wall = run(cmd, f"{out}.log", args.threads)
            summary = json.load(open(f"{out}/summary.json"))
            rate = summary[key]
            base = base or (rate if n == nprocs[0] else None)
            eff = rate / (n / nprocs[0] * base) if base else float("nan")
            row = {"stage": stage, "ranks": n, key: rate, "efficiency": eff, "wall_s": wall,
                   "train_seconds": summary["train_seconds"]}
            results.append(row)
            print(f"{stage:4s} ranks={n}  {key}={rate:10.1f}  efficiency={eff:5.2f}  "
                  f"(train {summary['train_seconds']:.1f} s, wall {wall:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "device": args.device, "threads": args.threads,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
