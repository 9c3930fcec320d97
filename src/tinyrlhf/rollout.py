"""Batched sampling with a KV cache for the online-RL loops (PPO, RLOO, GRPO, online DPO).

`generate` decodes left-padded prompts one token per step from a transformers cache, stops each row at
EOS and drops finished rows from the running batch, and returns tokens, masks and the log-prob of
every sampled token. Those log-probs equal what `tinyrlhf.logprobs.token_logps` recomputes on
`Rollout.sequences()` with the same temperature (same position ids, same fp32 log-softmax), so a
PPO ratio starts at exactly 1 (up to float rounding).
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from .errors import ConfigError, DataError
from .logprobs import cache_kwarg, output_cache, position_ids
from .loading import unwrap

# Drop finished rows from the running batch (copying the KV cache) once this fraction of it is done:
# each copy costs about one pass over the cache, each dropped row saves a whole forward per step.
COMPACT_FRACTION = 0.25


@dataclass
class Rollout:
    prompt_ids: torch.Tensor     # (B, P) left-padded with pad_token_id
    prompt_mask: torch.Tensor    # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor   # (B, R) pad after EOS; EOS kept when emitted; R = longest response
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor       # (B, R) fp32 log-prob of each sampled token, 0 where the mask is 0
    finished: torch.Tensor       # (B,) bool: the row emitted EOS

    def sequences(self) -> dict:
        """(B, P+R) input_ids / attention_mask / completion_mask for `token_logps`: the response log-probs
        are then `token_logps(...)[:, P-1:]`."""
        comp = torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)
        return {"input_ids": torch.cat([self.prompt_ids, self.response_ids], dim=1),
                "attention_mask": torch.cat([self.prompt_mask, self.response_mask], dim=1),
                "completion_mask": comp}

    def groups(self, k: int) -> dict:
        """The rollout as a `collate.pad_groups` batch for `logprobs.grouped_token_logps`, when its rows are
        k samples of each prompt, prompt-major (rows i*k .. i*k+k-1 share prompt i): (B/k, P) prompts,
        (B, R) responses. `grouped_token_logps` of it equals `token_logps(**sequences())[:, P-1:]`."""
        prompt_ids, prompt_mask = self.prompt_ids[::k], self.prompt_mask[::k]
        if not torch.equal(prompt_ids.repeat_interleave(k, 0), self.prompt_ids):
            raise ValueError(f"rollout rows are not {k} consecutive samples per prompt")
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                "completion_ids": self.response_ids, "completion_mask": self.response_mask}

    def texts(self, tokenizer) -> list[str]:
        """Decoded responses without the EOS and the padding."""
        out = []
        for ids, n, done in zip(self.response_ids.tolist(), self.response_mask.sum(-1).tolist(),
                                self.finished.tolist()):
            out.append(tokenizer.decode(ids[:n - 1 if done else n], skip_special_tokens=True))
        return out


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask), (B, P); a prompt longer than max_prompt_tokens keeps its END (the
    project's truncation policy: the question is usually last). No special tokens are added."""
    if max_prompt_tokens < 1:
        raise ConfigError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    rows = [ids[-max_prompt_tokens:] for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:  # left padding: generation appends on the right
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def _check(model, prompt_mask, max_new_tokens, temperature, top_k, top_p):
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt_mask.dim() != 2 or prompt_mask.shape[1] == 0:
        raise DataError("prompts must be a non-empty (B, P) batch", field="prompt_mask")
    if not bool(prompt_mask[:, -1].all()):
        empty = (prompt_mask.sum(-1) == 0).nonzero().flatten().tolist()
        raise DataError(f"rows {empty} have no prompt token" if empty else
                        "prompts must be left-padded (the last column must be real tokens)", field="prompt_mask")
    limit = getattr(unwrap(model).config, "max_position_embeddings", None)
    longest = int(prompt_mask.sum(-1).max())
    if limit is not None and longest + max_new_tokens > limit:
        raise ConfigError(f"longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                          f"the model's {limit} positions; shorten max_prompt_tokens or max_new_tokens")


def _truncate(z, top_k: int, top_p: float):
    """Tempered logits with the tokens outside top-k / top-p (nucleus, Holtzman et al. 2019) set to -inf."""
    if 0 < top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1:
        sorted_z, order = z.sort(dim=-1, descending=True)
        probs = sorted_z.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before this token already covers top_p; keeps the top 1
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return z


def sample_token(logits, u, temperature: float, top_k: int, top_p: float):
    """(tokens, log-probs) for logits (n, V) and one uniform per row u (n,).

    Inverse-CDF sampling with a single uniform per row: the noise a row sees is fixed by its index, so
    it does not depend on which other rows are still running (compaction) or on the batch."""
    z = logits.float()  # fp32 before softmax, also under bf16 autocast
    if temperature == 0:  # greedy; log-probs of the untempered distribution
        tok = z.argmax(-1)
        return tok, z.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - z.logsumexp(-1)
    z = z / temperature if temperature != 1 else z
    top = z.amax(-1, keepdim=True)
    p = (z - top).exp()  # (n, V) unnormalised probabilities, shared by the log-prob and the sampler
    lse = (top + p.sum(-1, keepdim=True).log()).squeeze(-1)
    if top_k > 0 or top_p < 1:
        p = (_truncate(z, top_k, top_p) - top).exp()  # truncated tokens are exactly 0
    cdf = p.cumsum(-1, dtype=torch.float64)  # fp64: fp32 rounding over 50k tokens would bias small ones
    total = cdf[:, -1:]
    x = torch.minimum(u.unsqueeze(-1).double() * total, torch.nextafter(total, torch.zeros_like(total)))
    tok = torch.searchsorted(cdf, x, right=True).squeeze(-1)  # first index with cdf > x, so p[tok] > 0
    return tok, z.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - lse


@torch.no_grad()
def generate(model, prompt_ids, prompt_mask, *, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             autocast=contextlib.nullcontext, n_per_prompt: int = 1, row_offset: int = 0) -> Rollout:
    """Sample up to `max_new_tokens` per left-padded prompt, each row stopping at its first EOS.

    `logprobs` are the log-probs of the sampled tokens under softmax(logits / temperature) over the FULL
    vocabulary in fp32 -- what PPO's ratio and `token_logps(..., temperature=T)` use -- even when top-k /
    top-p truncate the distribution the tokens are actually drawn from. temperature 0 = greedy, with the
    untempered log-probs. `autocast` is a factory of a context manager wrapped around the decoding
    (e.g. `lambda: torch.autocast("cpu", torch.bfloat16)`). Reproducible for a `seed` through a private
    generator (the global RNG is untouched); row i's noise depends only on (seed, i, max_new_tokens).
    Works for any transformers causal LM and peft wrappers: only the model's own forward is called.
    With `n_per_prompt` = k > 1, each prompt is sampled k times (rows i*k .. i*k+k-1 of the result, as if
    every prompt had been repeated k times) and its prompt pass runs once: its cache is repeated.
    `row_offset` = r: the rows are rows r, r+1, ... of a larger batch drawn with the same seed (their
    noise is that batch's): a rank of a torchrun job samples its share of a rollout exactly as one
    process sampling the whole batch would."""
    _check(model, prompt_mask, max_new_tokens, temperature, top_k, top_p)
    if n_per_prompt < 1:
        raise ConfigError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    device = prompt_ids.device
    unique_ids, unique_mask = prompt_ids, prompt_mask
    if n_per_prompt > 1:
        prompt_ids = prompt_ids.repeat_interleave(n_per_prompt, 0)
        prompt_mask = prompt_mask.repeat_interleave(n_per_prompt, 0)
    B, P = prompt_ids.shape
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.rand((row_offset + B, max_new_tokens), generator=gen, device=device)[row_offset:]  # row i: the i-th block of one stream

    # 1. Buffers for the whole batch; the running batch indexes into them through `rows`.
    resp = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    resp_mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)
    attn = torch.ones((B, P + max_new_tokens), dtype=torch.long, device=device)  # preallocated, sliced per step
    attn[:, :P] = prompt_mask
    rows = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    next_pos = prompt_mask.long().sum(-1, keepdim=True)  # (B, 1): position of the next fed token

    # 2. Only the last position's logits are needed: skip the LM head elsewhere when the model allows it.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters else {}
    was_training = model.training
    model.eval()  # dropout off while sampling (restored below)
    # One autocast region for the whole loop: autocast caches its low-precision copies of the weights only
    # while a region is open (re-entering per step re-cast every weight each step: 2x slower for gpt2-small).
    # The sampling math upcasts to fp32 first and uses no op that autocast lowers.
    try:
        with autocast():
            # prefill: positions counted over real tokens, as token_logps counts them; each distinct
            # prompt once, its cache and last logits repeated for its n_per_prompt samples
            out = model(input_ids=unique_ids, attention_mask=unique_mask, position_ids=position_ids(unique_mask),
                        use_cache=True, **keep)
            cache, logits = output_cache(out), out.logits[:, -1]
            if n_per_prompt > 1:
                if hasattr(cache, "batch_repeat_interleave"):
                    cache.batch_repeat_interleave(n_per_prompt)
                    logits = logits.repeat_interleave(n_per_prompt, 0)
                else:  # a cache type that cannot repeat rows: prefill every copy
                    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                                position_ids=position_ids(prompt_mask), use_cache=True, **keep)
                    cache, logits = output_cache(out), out.logits[:, -1]
            steps = 0
            for t in range(max_new_tokens):
                # 3. Sample for every running row; rows already done write pad / 0 (masked out).
                tok, lp = sample_token(logits, noise[rows, t], temperature, top_k, top_p)
                resp[rows, t] = torch.where(done, pad_token_id, tok)
                logps[rows, t] = torch.where(done, 0.0, lp)
                resp_mask[rows, t] = (~done).long()
                done = done | (tok == eos_token_id)
                steps = t + 1
                n_done = int(done.sum())  # the one host sync per step
                if n_done == rows.numel() or t == max_new_tokens - 1:
                    break
                # 4. Drop finished rows once enough of them are idle (the cache keeps its batch order).
                if n_done and n_done >= COMPACT_FRACTION * rows.numel() and hasattr(cache, "batch_select_indices"):
                    live = (~done).nonzero().flatten()
                    cache.batch_select_indices(live)
                    rows, done, next_pos, tok, attn = rows[live], done[live], next_pos[live], tok[live], attn[live]
                # 5. Feed the sampled token at its real position; the mask covers prompt + tokens so far.
                out = model(input_ids=torch.where(done, pad_token_id, tok).unsqueeze(-1),
                            attention_mask=attn[:, :P + t + 1], position_ids=next_pos,
                            use_cache=True, **{cache_kwarg(model): cache}, **keep)
                cache, logits = output_cache(out), out.logits[:, -1]
                next_pos = next_pos + 1
    finally:
        model.train(was_training)

    R = int(resp_mask[:, :steps].sum(-1).max())
    finished = ((resp == eos_token_id) & resp_mask.bool()).any(-1)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask.long(), response_ids=resp[:, :R],
                   response_mask=resp_mask[:, :R], logprobs=logps[:, :R], finished=finished)
