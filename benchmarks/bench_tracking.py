"""What each experiment tracker (train.report_to) costs per logged row, against no tracker in the same run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_tracking.py [--rows 600] [--repeats 3] [--only mlflow]

A row is what RunDir.log gets at a log step (every train.log_every steps): here a PPO row's 24 numbers. Each
tracker is measured in a child process of its own (cold imports; trackers keep process-wide state), where two
run directories are open at once: one without trackers (the baseline: the metrics.jsonl append) and one with
the tracker. Reported per row, against the baseline in the same child:
  wall    the time RunDir.log takes in the training loop: blocks of 20 rows alternate between the two
          directories (so both see the same load on this shared machine); the median of the block means;
  cpu     CPU time per row of the whole process and of its child processes (TensorBoard's writer thread,
          trackio's sender thread, W&B's wandb-core service), measured over all the rows of each directory
          and the flush after them (on a machine of 2 cores, background work slows training too);
  first   the first row (the tracker's import and start, once per process), flush (at each checkpoint) and
          close (at the end), each once.
"all" is the four trackers at once. A tracker that is not installed is skipped. With --repeats N each case runs
in N children (interleaved: every case once, then again) and each figure is the median over them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")
KEYS = ["lr", "kl/coef", "loss/policy", "loss/value", "policy/approx_kl", "policy/clipfrac", "policy/entropy_est",
        "val/clipfrac", "val/mean", "objective/scores", "objective/rlhf_reward", "objective/gold", "kl/seq",
        "response/length", "response/ended", "rollout/logprob_gap", "ppo/minibatches", "ppo/early_stopped",
        "grad_norm", "time/step", "episodes_per_s", "mem/rss_mib", "gold/mean", "gold/greedy"]
BLOCK = 20


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of every live descendant process (wandb-core)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                    for k in open(f"/proc/{pid}/task/{t}/children").read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                fields = open(f"/proc/{kid}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
            todo.append(kid)
    return total


def child(names: list[str], rows: int, out: str):
    from tinyrlhf.config import SFTConfig, load_config
    from tinyrlhf.train.rundir import RunDir
    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "TRACKIO_DIR"):
        os.environ.pop(var, None)
    root = tempfile.mkdtemp(prefix="bench-tracking-")
    plain = RunDir(os.path.join(root, "plain"), load_config(SFTConfig, None, [f"out_dir={root}/plain"]))
    tracked_cfg = load_config(SFTConfig, None, [f"out_dir={root}/tracked", f"train.report_to=[{','.join(names)}]"])
    tracked = RunDir(tracked_cfg.out_dir, tracked_cfg)
    rng = random.Random(0)
    row = lambda step: {"step": step, **{k: rng.random() for k in KEYS}}  # noqa: E731
    t = time.perf_counter()
    tracked.log(row(0))  # opens the tracker: imports, init
    first = time.perf_counter() - t
    plain.log(row(0))
    walls = {"plain": [], "tracked": []}
    cpu = {"plain": 0.0, "tracked": 0.0}
    for b in range(rows // BLOCK):
        for name, run in (("plain", plain), ("tracked", tracked)) if b % 2 == 0 else (("tracked", tracked), ("plain", plain)):
            c, t = cpu_seconds(), time.perf_counter()
            for i in range(BLOCK):
                run.log(row(1 + b * BLOCK + i))
            walls[name].append((time.perf_counter() - t) / BLOCK)
            cpu[name] += cpu_seconds() - c
    c, t = cpu_seconds(), time.perf_counter()
    tracked.tracking.flush()
    flush = time.perf_counter() - t
    time.sleep(1.0)  # background writers (a thread, wandb-core) finish what they got
    cpu["tracked"] += cpu_seconds() - c
    t = time.perf_counter()
    tracked.write_summary({"finished": True})
    close = time.perf_counter() - t
    n = rows // BLOCK * BLOCK
    shutil.rmtree(root, ignore_errors=True)
    with open(out, "w") as f:
        json.dump({"wall_plain": statistics.median(walls["plain"]), "wall_tracked": statistics.median(walls["tracked"]),
                   "cpu_plain": cpu["plain"] / n, "cpu_tracked": cpu["tracked"] / n, "first": first, "flush": flush,
                   "close": close, "rows": n}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600, help="rows logged to each directory")
    ap.add_argument("--repeats", type=int, default=1, help="children per case; figures are medians over them")
    ap.add_argument("--only", default="", help="comma-separated trackers (default: every installed one, then all)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child.split(","), args.rows, args.out)
    import importlib.util
    installed = [t for t in TRACKERS if importlib.util.find_spec(t) is not None]
    cases = [[t] for t in (args.only.split(",") if args.only else installed)]
    if not args.only and len(installed) > 1:
        cases.append(installed)
    print(f"{args.rows} rows of {len(KEYS)} numbers per directory; per-row times in microseconds; x = tracked / plain "
          f"in the same child process; medians of {args.repeats} children")
    print(f"{'tracker':28s} {'wall plain':>10s} {'wall +trk':>10s} {'x':>6s} {'cpu plain':>10s} {'cpu +trk':>10s} {'x':>6s}"
          f" {'first row':>10s} {'flush':>8s} {'close':>8s}")
    results: dict = {}
    for _ in range(args.repeats):
        for names in cases:
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                proc = subprocess.run([sys.executable, __file__, "--child", ",".join(names), "--rows", str(args.rows),
                                       "--out", tmp.name], env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{','.join(names):28s} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
                    continue
                results.setdefault(tuple(names), []).append(json.load(open(tmp.name)))
    for names, runs in results.items():
        r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        label = "all" if len(names) > 1 else names[0]
        print(f"{label:28s} {r['wall_plain'] * 1e6:10.0f} {r['wall_tracked'] * 1e6:10.0f} "
              f"{r['wall_tracked'] / r['wall_plain']:6.1f} {r['cpu_plain'] * 1e6:10.0f} {r['cpu_tracked'] * 1e6:10.0f} "
              f"{r['cpu_tracked'] / r['cpu_plain']:6.1f} {r['first']:9.2f}s {r['flush'] * 1e3:6.1f}ms "
              f"{r['close'] * 1e3:6.0f}ms")


if __name__ == "__main__":
    main()
