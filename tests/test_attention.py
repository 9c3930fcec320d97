"""tinyrlhf attention (batched matmuls, probabilities kept for backward) against transformers' SDPA: same
outputs and gradients through a GPT-2 with left padding and a key/value cache; SDPA takes over where the
saved probabilities would outgrow what flash keeps; an unknown choice is a clear config error."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinyrlhf import attention
from tinyrlhf.config import ModelConfig
from tinyrlhf.data.collate import pad_groups
from tinyrlhf.errors import ConfigError
from tinyrlhf.logprobs import grouped_token_logps
from tinyrlhf.models import build_model

V = 64


def pair(seed=0, n_positions=128):
    """The same random tiny GPT-2 twice: SDPA and tinyrlhf attention."""
    torch.manual_seed(seed)
    sdpa = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=n_positions,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    ours = copy.deepcopy(sdpa)
    attention.set_attention(ours, attention.NAME)
    assert sdpa.config._attn_implementation == "sdpa"
    return sdpa, ours


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_left_padded_rows_match_sdpa_values_and_gradients():
    sdpa, ours = pair()
    torch.manual_seed(1)
    ids = torch.randint(1, V, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7], mask[1, :1] = 0, 0  # left padding: the first rows attend to nothing but pads
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    outs = []
    for model in (sdpa, ours):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        (logits.float().log_softmax(-1)[..., 5] * mask).sum().backward()
        outs.append(logits * mask[..., None])
    assert torch.isfinite(outs[1]).all()
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads(sdpa), grads(ours), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_completions_on_a_shared_prompt_cache_match_sdpa(dtype):
    """The grouped pass: prompt once, completions on its repeated cache (queries shorter than keys)."""
    sdpa, ours = pair(seed=3)
    gs = [([5, 9, 2, 7], [[3, 4], [8, 8, 8, 1]]), ([11], [[2], [6, 6, 6]]), ([4] * 9, [[1, 2, 3], [7]])]
    batch = pad_groups(gs, 0)
    sums = []
    for model in (sdpa, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            s = grouped_token_logps(model, batch).sum(-1)
        s.sum().backward()
        sums.append(s)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    assert torch.allclose(sums[0], sums[1], **tol), sums
    assert torch.allclose(grads(sdpa), grads(ours), **tol)


def test_long_keys_go_to_sdpa(monkeypatch):
    """Probabilities of Tq x Tk cost more than flash's q, k, v, out once Tk > 4 x head_dim (64 here):
    such inputs must not reach the matmul path."""
    calls = []
    real = attention.sdpa_attention_forward

    def spy(*args, **kwargs):
        calls.append(args[1].shape[-2])
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    sdpa, ours = pair(n_positions=512)
    for n in (60, 70):  # head_dim 16: the limit is 4 x 16 = 64 keys for a square input
        ids = torch.randint(1, V, (1, n))
        a = ours(input_ids=ids).logits
        b = sdpa(input_ids=ids).logits
        assert torch.allclose(a, b, atol=1e-5)
    assert calls == [70, 70]  # both layers, only for the 70-token input


def test_unknown_attention_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention 'flash'"):
        build_model(ModelConfig(attention="flash"), ["some text for a tokenizer"])
