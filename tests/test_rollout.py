"""Rollout engine on a tiny random GPT-2: log-probs equal the trainer's recomputation, left padding and
compaction change nothing, greedy equals transformers' generate, masks, seeds, top-k/top-p, LoRA."""
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf import rollout
from tinyrlhf.config import LoRAConfig
from tinyrlhf.errors import ConfigError
from tinyrlhf.logprobs import token_logps
from tinyrlhf.models import add_lora, train_tokenizer
from tinyrlhf.rollout import Rollout, sample_token, encode_prompts, generate

V, EOS, PAD = 100, 1, 0
LENS = [3, 7, 12, 5, 9, 1, 12, 4]  # different prompt lengths: left padding exercised


def tiny_lm(eos_bias: float = 0.0, dropout: float = 0.0, seed: int = 0):
    """Random GPT-2 whose LM head has a bias, so `eos_bias` makes rows stop at EOS at different steps;
    head weights scaled up so logits are spread (no near-ties for greedy decoding)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=128, tie_word_embeddings=False,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                     bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    model = GPT2LMHeadModel(cfg)
    head = nn.Linear(32, V)
    head.weight.data.copy_(model.lm_head.weight * 30)
    head.bias.data.zero_()
    head.bias.data[EOS] = eos_bias
    model.lm_head = head
    return model.eval()


def prompts(lens=LENS, seed: int = 1):
    """Left-padded (ids, mask) of random tokens (never EOS/PAD)."""
    g = torch.Generator().manual_seed(seed)
    P = max(lens)
    ids, mask = torch.full((len(lens), P), PAD), torch.zeros((len(lens), P), dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, P - n:] = torch.randint(2, V, (n,), generator=g)
        mask[i, P - n:] = 1
    return ids, mask


def run(model, ids, mask, **kw):
    kw = {"max_new_tokens": 16, "eos_token_id": EOS, "pad_token_id": PAD, **kw}
    return generate(model, ids, mask, **kw)


def recomputed(model, r: Rollout, temperature: float):
    s = r.sequences()
    P = r.prompt_ids.shape[1]
    with torch.no_grad():
        return token_logps(model, s["input_ids"], s["attention_mask"], s["completion_mask"],
                           temperature=temperature)[:, P - 1:]


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(temperature=1.3, top_k=5), dict(temperature=0.7, top_p=0.8),
                                dict(temperature=0.0)])
def test_logprobs_equal_token_logps_on_sequences(kw):
    model = tiny_lm(eos_bias=2.5)
    r = run(model, *prompts(), **kw)
    lengths = r.response_mask.sum(-1)
    assert r.finished.any() and len(set(lengths.tolist())) >= 3  # rows stopped at different steps
    ref = recomputed(model, r, kw["temperature"] or 1.0)  # greedy: log-probs of the untempered distribution
    assert torch.allclose(r.logprobs, ref, atol=1e-4, rtol=0)
    assert r.logprobs.dtype == torch.float32 and (r.logprobs[r.response_mask == 0] == 0).all()
    assert (r.logprobs[r.response_mask == 1] < 0).all()


def test_bf16_autocast_logprobs_are_fp32_and_close():
    model = tiny_lm(eos_bias=2.5)
    ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    r = run(model, *prompts(), temperature=0.7, autocast=ac)
    with ac():
        ref = recomputed(model, r, 0.7)
    assert r.logprobs.dtype == torch.float32
    assert torch.allclose(r.logprobs, ref, atol=0.05, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_left_padded_prompt_samples_like_the_prompt_alone(temperature):
    """Row 0 (3 tokens, 9 pads) vs the same prompt alone: same noise (row 0 of the seed's stream)."""
    model = tiny_lm()
    ids, mask = prompts([3, 12])
    alone = run(model, ids[:1, -3:], mask[:1, -3:], temperature=temperature, seed=4)
    batch = run(model, ids, mask, temperature=temperature, seed=4)
    assert torch.equal(batch.response_ids[0], alone.response_ids[0])
    assert torch.allclose(batch.logprobs[0], alone.logprobs[0], atol=1e-5, rtol=0)


def test_compaction_does_not_change_what_rows_sample(monkeypatch):
    model = tiny_lm(eos_bias=2.5)
    ids, mask = prompts()
    monkeypatch.setattr(rollout, "COMPACT_FRACTION", 0.0)  # drop finished rows at every step
    eager = run(model, ids, mask, temperature=1.0, seed=3)
    monkeypatch.setattr(rollout, "COMPACT_FRACTION", 2.0)  # never drop
    lazy = run(model, ids, mask, temperature=1.0, seed=3)
    assert eager.finished.any() and not eager.finished.all()
    assert torch.equal(eager.response_ids, lazy.response_ids)
    assert torch.equal(eager.response_mask, lazy.response_mask)
    assert torch.allclose(eager.logprobs, lazy.logprobs, atol=1e-5, rtol=0)


def test_greedy_equals_transformers_generate():
    model = tiny_lm(eos_bias=1.5)
    ids, mask = prompts()
    ours = run(model, ids, mask, temperature=0.0)
    hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                        eos_token_id=EOS, pad_token_id=PAD)
    assert ours.finished.any() and not ours.finished.all()
    assert torch.equal(ours.response_ids, hf[:, ids.shape[1]:])


@pytest.mark.parametrize("pad", [PAD, EOS])  # pad == eos is the project's tokenizer convention
def test_masks_after_eos(pad):
    model = tiny_lm(eos_bias=2.5)
    r = run(model, *prompts(), temperature=1.0, pad_token_id=pad)
    assert r.finished.any() and not r.finished.all()
    assert r.response_ids.shape[1] == 16  # an unfinished row runs to max_new_tokens
    for ids, m, done in zip(r.response_ids.tolist(), r.response_mask.tolist(), r.finished.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (16 - n) and ids[n:] == [pad] * (16 - n)
        assert (ids[n - 1] == EOS) == done and EOS not in ids[:n - 1]
        assert done or n == 16


def test_seed_reproducible_and_global_rng_untouched():
    model = tiny_lm()
    ids, mask = prompts()
    state = torch.get_rng_state()
    a = run(model, ids, mask, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = run(model, ids, mask, seed=7)
    c = run(model, ids, mask, seed=8)
    for f in ("response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = tiny_lm(eos_bias=1.5)
    ids, mask = prompts()
    greedy = run(model, ids, mask, temperature=0.0)
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        r = run(model, ids, mask, temperature=1.0, seed=5, **kw)
        assert torch.equal(r.response_ids, greedy.response_ids), kw
        assert torch.allclose(r.logprobs, greedy.logprobs, atol=1e-6), kw  # T=1: same distribution


def test_top_k_tokens_are_within_the_top_k():
    model = tiny_lm()
    r = run(model, *prompts(), temperature=2.0, top_k=3, seed=2)
    s = r.sequences()
    with torch.no_grad():
        logits = model(input_ids=s["input_ids"], attention_mask=s["attention_mask"],
                       position_ids=rollout.position_ids(s["attention_mask"])).logits
    P = r.prompt_ids.shape[1]
    top3 = logits[:, P - 1:-1].topk(3, dim=-1).indices  # (B, R, 3)
    assert (top3 == r.response_ids.unsqueeze(-1)).any(-1)[r.response_mask.bool()].all()
    assert not (top3[..., 0] == r.response_ids)[r.response_mask.bool()].all()  # not just greedy


def test_sampler_frequencies_match_the_truncated_distribution():
    """40k draws from one logit row: empirical frequencies within 0.01 of softmax(z / T), renormalised
    after top-k / top-p; the returned log-prob is always that of the full tempered distribution."""
    z = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(40_000, 5)
    u = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    full = torch.softmax(z[0] / 0.8, -1)
    for kw, keep in ((dict(top_k=0, top_p=1.0), 5), (dict(top_k=2, top_p=1.0), 2), (dict(top_k=0, top_p=0.7), 2)):
        tok, lp = sample_token(z, u, 0.8, **kw)
        freq = torch.bincount(tok, minlength=5).float() / len(tok)
        expect = torch.zeros(5)
        expect[:keep] = full[:keep] / full[:keep].sum()
        assert (freq - expect).abs().max() < 0.01, (kw, freq, expect)
        assert torch.allclose(lp, full.log()[tok])


@pytest.mark.parametrize("kw, word", [(dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"),
                                      (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=0), "max_new_tokens"),
                                      (dict(top_k=-1), "top_k"), (dict(max_new_tokens=200), "positions")])
def test_bad_arguments_raise_config_error(kw, word):
    with pytest.raises(ConfigError, match=word):
        run(tiny_lm(), *prompts(), **kw)


def test_right_padded_prompts_are_rejected():
    ids, mask = prompts([2, 4])
    with pytest.raises(ValueError, match="left-padded"):
        run(tiny_lm(), ids.flip(1), mask.flip(1))


def test_eval_mode_during_generation_and_mode_restored():
    model = tiny_lm(dropout=0.5).train()
    ids, mask = prompts()
    a, b = run(model, ids, mask, seed=1), run(model, ids, mask, seed=1)
    assert model.training and torch.equal(a.logprobs, b.logprobs)  # dropout was off
    assert torch.allclose(a.logprobs, recomputed(model.eval(), a, 1.0), atol=1e-4)


def test_lora_wrapped_model():
    base = tiny_lm(eos_bias=2.5)
    plain = run(base, *prompts(), temperature=0.0)
    model = add_lora(base, LoRAConfig(enabled=True, r=4))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters change the outputs
            p.data.normal_(std=0.5)
    model.train()
    r = run(model, *prompts(), temperature=0.7, seed=2)
    assert model.training and r.finished.any()
    assert torch.allclose(r.logprobs, recomputed(model, r, 0.7), atol=1e-4, rtol=0)
    assert not torch.equal(run(model, *prompts(), temperature=0.0).response_ids, plain.response_ids)


def test_encode_prompts_keeps_the_end_and_texts_strip_eos():
    corpus = ["the cat sat on the mat", "a dog ran in the park", "hello world"] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    full = tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    ids, mask = encode_prompts(tok, ["the cat sat on the mat", "hello"], max_prompt_tokens=3)
    short = tok("hello", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == full[-3:] and mask[0].tolist() == [1, 1, 1]
    assert ids[1].tolist() == [tok.pad_token_id] * (3 - len(short)) + short
    assert mask[1].tolist() == [0] * (3 - len(short)) + [1] * len(short)
    eos, dog = tok.eos_token_id, tok(" dog ran", add_special_tokens=False)["input_ids"]
    r = Rollout(prompt_ids=ids, prompt_mask=mask, response_ids=torch.tensor([dog + [eos], dog + [dog[0]]]),
                response_mask=torch.ones(2, len(dog) + 1, dtype=torch.long), logprobs=torch.zeros(2, len(dog) + 1),
                finished=torch.tensor([True, False]))
    assert r.texts(tok) == [" dog ran", " dog ran" + tok.decode([dog[0]])]


def test_n_per_prompt_samples_like_repeated_prompts():
    """k samples per prompt with one prompt pass (its cache repeated) = the prompts repeated k times."""
    model = tiny_lm(eos_bias=2.0)
    ids, mask = prompts([3, 9, 5])
    shared = run(model, ids, mask, n_per_prompt=3, seed=7)
    repeated = run(model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), seed=7)
    assert torch.equal(shared.prompt_ids, repeated.prompt_ids)
    assert torch.equal(shared.response_ids, repeated.response_ids)
    assert torch.equal(shared.response_mask, repeated.response_mask)
    assert torch.allclose(shared.logprobs, repeated.logprobs, atol=1e-5)
    assert len(set(map(tuple, shared.response_ids[:3].tolist()))) > 1  # the k samples differ
    with pytest.raises(ConfigError, match="n_per_prompt"):
        run(model, ids, mask, n_per_prompt=0)


def test_row_offset_samples_a_share_as_the_whole_batch_would():
    """A torchrun rank samples rows [a, b) of the global batch with row_offset=a: the same tokens and
    log-probs as those rows of one process's whole batch (the noise is keyed by the global row), for each
    half and with k samples per prompt. Different noise per row: the halves are not copies of each other."""
    model = tiny_lm(eos_bias=2.0)
    ids, mask = prompts()
    whole = run(model, ids, mask, seed=5, n_per_prompt=2)
    for lo, hi in ((0, 4), (4, 8)):
        part = run(model, ids[lo:hi, -max(LENS[lo:hi]):], mask[lo:hi, -max(LENS[lo:hi]):], seed=5, n_per_prompt=2,
                   row_offset=2 * lo)
        rows = slice(2 * lo, 2 * hi)
        width = part.response_ids.shape[1]
        assert torch.equal(part.response_ids, whole.response_ids[rows, :width])
        assert torch.equal(part.response_mask, whole.response_mask[rows, :width])
        assert not whole.response_mask[rows, width:].any()
        torch.testing.assert_close(part.logprobs, whole.logprobs[rows, :width], rtol=0, atol=1e-5)
    unkeyed = run(model, ids[4:], mask[4:], seed=5, n_per_prompt=2)  # without the offset: other samples
    assert not torch.equal(unkeyed.response_ids[:, :4], whole.response_ids[8:, :4])
