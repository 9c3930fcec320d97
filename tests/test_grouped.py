"""Prefix sharing (logprobs.grouped_token_logps): k completions scored on one pass over their prompt give
the same log-probs AND gradients as k separate prompt+completion rows; grouped truncation keeps one prompt
per group; pad_groups' layout."""
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf.config import LoRAConfig
from tinyrlhf.data.collate import TruncationStats, group_slot, pad, pad_groups, truncate, truncate_group
from tinyrlhf.logprobs import grouped_token_logps, scored_tokens, token_logps
from tinyrlhf.models import add_lora

V, PAD = 64, 0


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=128,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def groups(k: int, prompt_lens, seed: int = 0):
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(1, V) for _ in range(n)]  # noqa: E731
    return [(ids(n), [ids(rng.randrange(1, 9)) for _ in range(k)]) for n in prompt_lens]


def flat_sums(model, gs, k):
    """The reference computation: every (prompt, completion j) as its own right-padded row."""
    b = pad([(p, c) for p, cs in gs for c in cs], PAD)
    return token_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).sum(-1)


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_shared_prompt_equals_separate_rows_values_and_gradients(k):
    model = tiny()
    gs = groups(k, [5, 17, 1, 30, 9])  # uneven prompts: left padding inside the shared pass
    batch = pad_groups(gs, PAD)
    expected = flat_sums(model, gs, k)
    expected.sum().backward()
    g_expected = grads(model)
    for share in (True, False):
        model.zero_grad()
        got = grouped_token_logps(model, batch, share_prompt=share).sum(-1)
        got.sum().backward()
        assert torch.allclose(got, expected, atol=1e-5), (share, got - expected)
        assert torch.allclose(grads(model), g_expected, atol=1e-5), share


def test_gradient_reaches_the_prompt_through_every_completion():
    """Weight a single completion: the prompt's embeddings must still get gradient (via the cache)."""
    model = tiny()
    gs = groups(2, [6, 6])
    batch = pad_groups(gs, PAD)
    for j in range(2):
        model.zero_grad()
        grouped_token_logps(model, batch).view(2, 2, -1)[:, j].sum().backward()
        wte = model.transformer.wte.weight.grad
        prompt_tokens = sorted({t for p, _ in gs for t in p} - {t for _, cs in gs for c in cs for t in c})
        assert wte[prompt_tokens].abs().sum() > 0, j


def test_empty_prompts_score_like_token_logps():
    model = tiny()
    mixed = groups(2, [0, 4, 0])
    none = groups(2, [0, 0])
    for gs in (mixed, none):
        batch = pad_groups(gs, PAD)
        for share in (True, False):
            got = grouped_token_logps(model, batch, share_prompt=share).sum(-1)
            assert torch.allclose(got, flat_sums(model, gs, 2), atol=1e-5)
        counts = scored_tokens(batch).view(-1, 2)
        assert counts.tolist() == [[len(c) - (len(p) == 0) for c in cs] for p, cs in gs]


def test_bf16_autocast_is_close_to_fp32_and_fp32_out():
    model = tiny()
    gs = groups(2, [12, 3, 20])
    batch = pad_groups(gs, PAD)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = grouped_token_logps(model, batch)
    assert low.dtype == torch.float32
    assert torch.allclose(low.sum(-1), flat_sums(model, gs, 2), atol=0.05 * low.abs().sum(-1).max().item())


def test_lora_model_with_adapters_disabled_is_the_base():
    base = tiny()
    gs = groups(2, [7, 11])
    batch = pad_groups(gs, PAD)
    expected = grouped_token_logps(base, batch)
    lora = add_lora(base, LoRAConfig(enabled=True, r=4, target_modules=["c_attn"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert not torch.allclose(grouped_token_logps(lora, batch), expected, atol=1e-4)
    with lora.disable_adapter():
        assert torch.allclose(grouped_token_logps(lora, batch), expected, atol=1e-5)


def test_pad_groups_layout():
    gs = [([1, 2, 3], [[4], [5, 6]]), ([7], [[8, 9, 10], [11]])]
    b = pad_groups(gs, PAD)
    assert b["prompt_ids"].tolist() == [[1, 2, 3], [0, 0, 7]]  # left-padded
    assert b["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["completion_ids"].tolist() == [[4, 0, 0], [5, 6, 0], [8, 9, 10], [11, 0, 0]]  # prompt-major
    assert b["completion_mask"].sum(-1).tolist() == [1, 2, 3, 1]
    second = group_slot(b, 1)
    assert second["completion_ids"].tolist() == [[5, 6, 0], [11, 0, 0]]
    assert torch.equal(second["prompt_ids"], b["prompt_ids"])
    with pytest.raises(ValueError, match="same number of completions"):
        pad_groups([([1], [[2]]), ([1], [[2], [3]])], PAD)


def test_truncate_group_keeps_one_prompt_sized_by_the_longest_completion():
    stats = TruncationStats()
    prompt, (short, long) = truncate_group(list(range(100)), [[1, 2], list(range(40))], 64, stats)
    assert prompt == list(range(100))[-32:]  # half of max_length kept: the long completion takes the rest
    assert short == [1, 2] and long == list(range(32))
    assert len(prompt) + len(long) == 64
    assert (stats.examples, stats.prompt_truncated, stats.completion_truncated) == (2, 2, 1)
    counted = TruncationStats()
    truncate_group(list(range(100)), [[1, 2], list(range(40))], 64, counted, counted=1)
    assert (counted.examples, counted.prompt_truncated, counted.completion_truncated) == (1, 1, 0)
    anchored = truncate_group(list(range(100)), [[1, 2], list(range(40))], 64, anchor=0)
    assert anchored == truncate(list(range(100)), [1, 2], 64)[:1] + ([[1, 2], list(range(2))],)
    same = truncate_group([1, 2, 3], [[4], [5]], 64)
    assert same == ([1, 2, 3], [[4], [5]])


def test_reference_pass_returns_data_order_whatever_the_batching(tmp_path):
    """reference_logps sorts groups by prompt length into batches; its (k, N) answer is in data order."""
    from tinyrlhf.train.reference import reference_logps
    model = tiny()
    gs = groups(2, [20, 3, 11, 0, 7, 15, 1])
    sums, counts = reference_logps(model, gs, PAD, torch.device("cpu"), "fp32", str(tmp_path), batch_size=3)
    assert sums.shape == (2, len(gs))
    assert torch.allclose(sums.T.flatten(), flat_sums(model, gs, 2).detach(), atol=1e-5)
    assert counts.T.flatten().tolist() == [len(c) - (len(p) == 0) for p, cs in gs for c in cs]


def test_rollout_groups_score_like_its_sequences():
    """k samples per prompt from the rollout engine, scored once per prompt, equal token_logps on the
    rollout's own (prompt + response) rows; rows that are not k per prompt are refused."""
    from tinyrlhf.rollout import generate
    model = tiny()
    g = torch.Generator().manual_seed(0)
    lens, k = [4, 9, 6], 3
    P = max(lens)
    ids, mask = torch.full((len(lens), P), PAD), torch.zeros((len(lens), P), dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, P - n:] = torch.randint(2, V, (n,), generator=g)
        mask[i, P - n:] = 1
    ro = generate(model, ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), max_new_tokens=7,
                  eos_token_id=1, pad_token_id=PAD, seed=3)
    s = ro.sequences()
    expected = token_logps(model, s["input_ids"], s["attention_mask"], s["completion_mask"])[:, P - 1:]
    got = grouped_token_logps(model, ro.groups(k))
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="consecutive samples"):
        ro.groups(2)
