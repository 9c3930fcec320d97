"""Rollout throughput: tinyrlhf.rollout.generate against transformers' `model.generate`, same run.

    .venv/bin/python benchmarks/bench_rollout.py [--quick] [--threads 1] [--repeats 3] [--only tiny|small]

Same random-init model, same left-padded prompts (lengths drawn around 100 tokens), 48 new tokens,
pure sampling (T=1, top_k=0, top_p=1), with fp32 and with bf16 autocast; gpt2-tiny shape (vocab 2048,
batch 64) and gpt2-small shape (124M, vocab 50257, batch 16). Two cases:
  no-stop  the random model (almost) never emits EOS: every row runs the full 48 tokens;
  stops    an EOS logit bias makes rows stop after ~12 tokens on average (geometric lengths), which is
           where dropping finished rows from the running batch pays.
Repeats are interleaved (HF, ours, HF, ours, ...) and the median is reported. tokens/s counts the
tokens each method generated up to and including EOS (not the padding after it). Each method is also
timed for 1 new token (~ the prompt prefill, the same forward for both): `prefill` is ours, `decode`
is the tokens/s ratio with that taken out, i.e. what the decoding loop itself gains.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

from tinyrlhf.models import PRESETS
from tinyrlhf.rollout import generate

EOS, PAD = 0, 0


def build(preset: str, vocab: int, mean_len: float | None):
    """Random GPT-2; with mean_len, an untied LM head with a bias on EOS so that P(EOS) per step is
    1 / mean_len (the rest of the head unchanged)."""
    kw = dict(PRESETS[preset], vocab_size=vocab)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(**kw, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                                        tie_word_embeddings=False, bos_token_id=EOS,
                                                        eos_token_id=EOS, pad_token_id=PAD)).eval()
    if mean_len:
        head = nn.Linear(model.config.n_embd, vocab)
        head.weight.data.copy_(model.lm_head.weight)
        head.bias.data.zero_()
        head.bias.data[EOS] = math.log((vocab - 1) / (mean_len - 1))  # logits are ~0 elsewhere
        model.lm_head = head
    return model


def prompts(batch: int, mean_len: int, vocab: int, device):
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(mean_len * 3 // 4, mean_len * 5 // 4 + 1, (batch,), generator=g)
    P = int(lens.max())
    ids = torch.full((batch, P), PAD, dtype=torch.long)
    mask = torch.zeros((batch, P), dtype=torch.long)
    for i, n in enumerate(lens.tolist()):
        ids[i, P - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, P - n:] = 1
    return ids.to(device), mask.to(device)


def useful_tokens(resp) -> int:
    """Generated tokens up to and including the first EOS of each row."""
    is_eos = resp == EOS
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return int((~after).sum())


def run_hf(model, ids, mask, new, seed, ctx):
    torch.manual_seed(seed)
    with ctx():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD)
    return useful_tokens(out[:, ids.shape[1]:])


def run_ours(model, ids, mask, new, seed, ctx):
    r = generate(model, ids, mask, max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD, temperature=1.0,
                 seed=seed, autocast=ctx)
    return int(r.response_mask.sum())


def timed(fn, sync):
    sync()
    t = time.perf_counter()
    n = fn()
    sync()
    return time.perf_counter() - t, n


def bench(preset, vocab, batch, plen, new, case, precision, repeats, device):
    """Median (seconds, tokens) per method for `new` tokens, and for 1 token (~ the shared prefill)."""
    model = build(preset, vocab, 12.0 if case == "stops" else None).to(device)
    ids, mask = prompts(batch, plen, vocab, device)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fns = {"hf": run_hf, "ours": run_ours}
    for f in fns.values():  # warm-up (allocator, kernels, lazy imports)
        f(model, ids, mask, 2, 0, ctx)
    res = {(k, n): [] for k in fns for n in (new, 1)}
    for r in range(repeats):
        for n in (new, 1):
            for k, f in fns.items():
                res[k, n].append(timed(lambda: f(model, ids, mask, n, r + 1, ctx), sync))
    return {key: (statistics.median(d for d, _ in v), statistics.median(t for _, t in v)) for key, v in res.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats; gpt2-small at batch 8 with ~48-token prompts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 3, quick 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["tiny", "small"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = args.repeats or (2 if args.quick else 3)
    new = 48
    small = (8, 48) if args.quick else (16, 100)
    setups = [("gpt2-tiny", 2048, 64, 100), ("gpt2-small", 50257, *small)]
    if args.only:
        setups = [s for s in setups if s[0].endswith(args.only)]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{new} new tokens, median of {repeats} interleaved repeats")
    print(f"{'model':<11}{'batch':>6}{'prompt':>7} {'case':<8}{'prec':<5}{'HF tok/s':>9}{'ours tok/s':>11}"
          f"{'ratio':>7}{'decode':>8}{'HF s':>7}{'ours s':>7}{'prefill':>8}{'HF tok':>7}{'ours tok':>9}")
    for preset, vocab, batch, plen in setups:
        for case in ("no-stop", "stops"):
            for precision in ("fp32", "bf16"):
                o = bench(preset, vocab, batch, plen, new, case, precision, repeats, device)
                (hd, hn), (od, on) = o["hf", new], o["ours", new]
                (hp, _), (op, _) = o["hf", 1], o["ours", 1]
                # decode ratio: tokens/s after the first token, i.e. with the (shared) prefill taken out
                dec = ((on - batch) / max(od - op, 1e-9)) / ((hn - batch) / max(hd - hp, 1e-9))
                print(f"{preset:<11}{batch:>6}{plen:>7} {case:<8}{precision:<5}{hn / hd:>9.0f}{on / od:>11.0f}"
                      f"{(on / od) / (hn / hd):>6.2f}x{dec:>7.2f}x{hd:>7.2f}{od:>7.2f}{op:>8.2f}"
                      f"{hn:>7.0f}{on:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
