"""Padded against packed (padding-free) training steps on positive_review, tokens/s measured in the same run.

    make bench            (or: .venv/bin/python benchmarks/bench_packing.py [--rounds 5] [--batches 12])

The data is the task generator's (`tinyrlhf data`), tokenised with a tokenizer trained on it as a preset run
does; the model is the study's (configs/positive_review: random-init gpt2-tiny, max_length 96, batch 32, SFT
with prompt_loss_weight 1, a last-token reward model), bf16 autocast as `train.precision=auto` on CPU. Each
step is what `fit` times: building the micro-batch (pad, and pack), forward, backward, clipping, AdamW,
through tinyrlhf's own loss functions (train.sft.sft_loss, train.reward.reward_loss).

Rows, all over the same micro-batches of the seeded BatchPlan (the examples of each step are the same):
  padded              the default: length-bucketed batches, right-padded to their longest sequence
  packed              packing.pack as training runs it: rows no longer than the batch's longest sequence
  packed, rows of 96  rows of up to data.max_length tokens: fewer, fuller rows, longer attention
  padded, width x16   the padded batch with its width rounded up to a multiple of 16 (more cells, aligned
                      matmuls: what bf16 CPU kernels are sensitive to, measured here for comparison)
and, for context, the same number of batches drawn WITHOUT length bucketing (random examples), padded and
packed into rows of 96: what bucketing already saves, and what packing would have saved without it.
Each round runs every variant over the batches, one variant after another, in an order that rotates from
round to round; a row's tokens/s is the median over the rounds (after a warm-up round) of its real tokens
over the process's CPU time, and the ratio is against the padded row of the same run. Run single-threaded:
OMP_NUM_THREADS=1 (the script also sets torch's threads to --threads, default 1).
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config

from tinyrlhf.attention import NAME as ATTENTION, set_attention
from tinyrlhf.config import TrainConfig
from tinyrlhf.data import packing
from tinyrlhf.data.collate import BatchPlan, encode, pad
from tinyrlhf.data.records import read_records
from tinyrlhf.models import PRESETS, RewardModel, train_tokenizer
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.train.engine import batch_tokens, build_optimizer
from tinyrlhf.train.reward import reward_loss
from tinyrlhf.train.sft import sft_loss

MAX_LENGTH, BATCH, PAD = 96, 32, 0


def task_data(root: str, n_prompts: int):
    write_task_data("positive_review", root, seed=0, n_train_prompts=n_prompts, n_eval_prompts=8,
                    n_pairs=n_prompts, n_rankings=0, n_binary=0, n_eval_pairs=4)
    sft = read_records(f"{root}/sft.jsonl", "sft")
    pairs = read_records(f"{root}/pairs.jsonl", "pair")
    tok = train_tokenizer([r.prompt + r.completion for r in sft] + [p.chosen for p in pairs] +
                          [p.rejected for p in pairs], 2048)
    sft_ex = encode(tok, [r.prompt for r in sft], [r.completion for r in sft], MAX_LENGTH)
    chosen = encode(tok, [p.prompt for p in pairs], [p.chosen for p in pairs], MAX_LENGTH)
    rejected = encode(tok, [p.prompt for p in pairs], [p.rejected for p in pairs], MAX_LENGTH)
    return tok, sft_ex, chosen, rejected


def model(preset: str, vocab: int):
    kw = dict(PRESETS[preset])
    kw["vocab_size"] = max(kw.get("vocab_size", 0), -(-vocab // 64) * 64)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(GPT2Config(**kw, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    set_attention(lm, ATTENTION)
    return lm


def batches(lengths: list[int], n: int, bucketed: bool) -> list[list[int]]:
    if bucketed:
        return BatchPlan(lengths, BATCH, seed=0).epoch(0)[:n]
    idx = list(range(len(lengths)))
    random.Random(0).shuffle(idx)
    return [idx[i * BATCH:(i + 1) * BATCH] for i in range(n)]


def stepper(kind: str, module, make_batch):
    opt = build_optimizer(module, TrainConfig(lr=1e-5))
    params = [p for p in module.parameters() if p.requires_grad]

    def step(idx) -> tuple[int, int]:
        batch = make_batch(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = sft_loss(module, batch, 1.0) if kind == "sft" else reward_loss(module, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch_tokens(batch), batch["input_ids"].numel()

    return step


def run(kind: str, data, preset: str, n_batches: int, rounds: int):
    tok, sft_ex, chosen, rejected = data
    if kind == "sft":
        lengths = [len(p) + len(c) for p, c in sft_ex]
        rows_of = lambda idx: [sft_ex[i] for i in idx]  # noqa: E731
    else:
        lengths = [max(len(a[0]) + len(a[1]), len(b[0]) + len(b[1])) for a, b in zip(chosen, rejected)]
        rows_of = lambda idx: [chosen[i] for i in idx] + [rejected[i] for i in idx]  # noqa: E731

    def maker(capacity):
        def make(idx):
            batch = pad(rows_of(idx), PAD)
            if kind == "reward":
                batch["margin"] = torch.zeros(len(idx))
            if capacity == "x16":  # the padded batch, its width rounded up to a multiple of 16
                extra = -batch["input_ids"].shape[1] % 16
                return {k: F.pad(v, (0, extra), value=PAD if k == "input_ids" else 0) if v.dim() == 2 else v
                        for k, v in batch.items()}
            if capacity == "p16":  # packed into rows of the longest sequence rounded up to 16, width x16
                return packing.pack(batch, PAD, None, multiple=16)
            return batch if capacity is None else packing.pack(batch, PAD, capacity or None)
        return make

    variants = [("padded", True, None), ("packed", True, 0), ("packed, rows of 96", True, MAX_LENGTH),
                ("padded, width x16", True, "x16"), ("packed, width x16", True, "p16"),
                ("padded, unbucketed", False, None), ("packed 96, unbucketed", False, MAX_LENGTH)]
    steps = {}
    for name, bucketed, capacity in variants:
        lm = model(preset, len(tok))
        module = lm if kind == "sft" else RewardModel(lm, pool="last")
        steps[name] = (stepper(kind, module, maker(capacity)), batches(lengths, n_batches, bucketed))
    # per variant and round: real tokens, cells, CPU seconds of this process (not wall time: on a shared
    # machine a descheduled step would count other programs' time; single-threaded, CPU time is the step's)
    per_round = {name: [] for name, _, _ in variants}
    names = [name for name, _, _ in variants]
    for r in range(rounds + 1):  # round 0 warms up
        # each variant runs its batches as one block (a step right after another variant's differently
        # shaped one pays for the allocator's reshuffle: ~10 % either way); the block order rotates per round
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, plan = steps[name]
            real = cells = 0
            t = time.process_time()
            for i in range(n_batches):
                a, b = step(plan[i])
                real, cells = real + a, cells + b
            if r:
                per_round[name].append((real, cells, time.process_time() - t))
    speed = {name: statistics.median(real / sec for real, _, sec in rows) for name, rows in per_round.items()}
    util = {name: rows[0][0] / rows[0][1] for name, rows in per_round.items()}
    base = speed["padded"]
    print(f"\n{kind}: {preset}, {n_batches} batches of {BATCH} {'examples' if kind == 'sft' else 'pairs'} x "
          f"{rounds} rounds, bf16, {torch.get_num_threads()} thread(s)")
    print(f"{'row':24s} {'tokens/s':>9s} {'real/cells':>10s} {'vs padded':>9s}")
    for name in names:
        print(f"{name:24s} {speed[name]:9.0f} {util[name]:10.3f} {speed[name] / base:8.2f}x")
    return {name: speed[name] / base for name in names}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-tiny")
    ap.add_argument("--batches", type=int, default=12, help="micro-batches per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=2000, help="train prompts (and pairs) generated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; positive_review data, max_length {MAX_LENGTH}")
    with tempfile.TemporaryDirectory() as root:
        data = task_data(root, args.prompts)
    sft = run("sft", data, args.preset, args.batches, args.rounds)
    rm = run("reward", data, args.preset, args.batches, args.rounds)
    print(f"\nratio packed / padded (tokens/s, same run): SFT {sft['packed']:.2f}x, reward model {rm['packed']:.2f}x")


if __name__ == "__main__":
    main()
