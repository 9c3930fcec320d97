"""Training throughput against the machine's own matmul peak, measured in the same run.

    make bench            (or: .venv/bin/python benchmarks/bench_train.py [--steps 6] [--quick])

1. Dense matmul FLOP/s in bf16 and fp32 (the peak a training step could reach).
2. SFT and reward-model training steps (forward + backward + AdamW) of a random-init gpt2-small
   (124M, vocab 50257) at batch 8 x 128 tokens, through tinyrlhf's own loss code, with bf16 autocast
   and with fp32; plus, as a baseline, the plain transformers path (model(labels=...)).
Model FLOPs per step ~= 6 * params * tokens (Kaplan et al. 2020; for the reward model, whose trunk
never multiplies by the embedding matrix, params excludes the token embedding); the script prints tokens/s, the
achieved FLOP/s and its fraction of the measured bf16 peak.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, GPT2Config

from tinyrlhf.attention import NAME as ATTENTION, set_attention
from tinyrlhf.config import TrainConfig
from tinyrlhf.logprobs import token_logps
from tinyrlhf.models import PRESETS, RewardModel
from tinyrlhf.train.engine import build_optimizer


def matmul_peak(dtype: torch.dtype) -> float:
    """Best dense matmul FLOP/s over a few square sizes."""
    return max(_matmul(dtype, n) for n in (1024, 2048, 3072))


def _matmul(dtype: torch.dtype, n: int, reps: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def gpt2(preset: str, vocab: int | None = None):
    kw = dict(PRESETS[preset])
    kw["vocab_size"] = vocab or kw.get("vocab_size", 50257)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(GPT2Config(**kw, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))


def timed_steps(step_fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step_fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_step(kind: str, model, batch: int, seq: int, precision: str):
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq))
    attn = torch.ones_like(ids)
    comp = torch.ones_like(ids)
    comp[:, : seq // 4] = 0  # a prompt of a quarter of the sequence
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    if kind == "reward":
        module = RewardModel(model)
    else:
        module = model
    opt = build_optimizer(module, TrainConfig(lr=1e-5))

    def step():
        with ctx():
            if kind == "sft":
                logps = token_logps(model, ids, attn, comp)
                mask = comp[:, 1:]
                loss = -(logps * mask).sum() / mask.sum()
            elif kind == "hf-baseline":
                labels = ids.masked_fill(comp == 0, -100)
                loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            else:  # reward: batch/2 pairs, chosen and rejected in one forward
                r = module.raw(ids, attn)
                rc, rr = r.chunk(2)
                loss = -torch.nn.functional.logsigmoid(rc - rr).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--quick", action="store_true", help="bf16 rows only")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"matmul peak  bf16 {peak_bf16 / 1e12:7.3f} TFLOP/s   fp32 {peak_fp32 / 1e12:7.3f} TFLOP/s   "
          f"ratio {peak_bf16 / peak_fp32:.1f}x")
    tokens = args.batch * args.seq
    rows = [("sft", "bf16"), ("reward", "bf16"), ("hf-baseline", "bf16")]
    if not args.quick:
        rows += [("sft", "fp32"), ("hf-baseline", "fp32")]
    print(f"\n{args.preset}, batch {args.batch} x {args.seq} tokens, {args.steps} timed steps (median)")
    print(f"{'step':12s} {'prec':5s} {'s/step':>7s} {'tokens/s':>9s} {'TFLOP/s':>8s} {'% bf16 peak':>11s}")
    results = {}
    for kind, prec in rows:
        model = gpt2(args.preset)
        if kind != "hf-baseline":  # tinyrlhf's rows run its default attention, as `tinyrlhf sft` does
            set_attention(model, ATTENTION)
        params = sum(p.numel() for p in model.parameters())
        if kind == "reward":  # no LM-head matmul: the embedding is only a lookup, so leave it out
            params -= model.get_input_embeddings().weight.numel()
        sec = timed_steps(make_step(kind, model, args.batch, args.seq, prec), args.steps)
        flops = 6 * params * tokens / sec
        results[(kind, prec)] = tokens / sec
        print(f"{kind:12s} {prec:5s} {sec:7.3f} {tokens / sec:9.0f} {flops / 1e12:8.3f} "
              f"{100 * flops / peak_bf16:10.1f}%")
        del model
    base = results[("hf-baseline", "bf16")]
    print(f"ratio tinyrlhf sft / transformers labels-loss (bf16): {results[('sft', 'bf16')] / base:.2f}x")
    if ("sft", "fp32") in results:
        print(f"ratio tinyrlhf sft bf16 / fp32: {results[('sft', 'bf16')] / results[('sft', 'fp32')]:.2f}x")


if __name__ == "__main__":
    main()
