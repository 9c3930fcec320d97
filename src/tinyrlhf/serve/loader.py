"""Load what `tinyrlhf serve` was pointed at: a run directory, a merged or LoRA `final/`, or any local HF
causal-LM directory, as an eval-mode model (optionally quantised) and its tokenizer; or a reward model (a
reward run, or its final/ with reward_head.safetensors) for POST /v1/rewards.

Models load through the project's loader (tinyrlhf.loading.load_causal_lm: a plain HF dir, or an unmerged
LoRA adapter merged in memory).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..attention import set_attention
from ..errors import ConfigError
from ..models import load_tokenizer
from .quantize import quantize


def load_causal_lm(path: str, *, dtype: torch.dtype = torch.float32):
    """A causal LM from a HF directory or an unmerged LoRA final/ (adapters merged in memory): the project's
    loader (tinyrlhf.loading), checked first so a broken directory is one line, with the fused GELU kernel."""
    from ..loading import check_model_dir, load_causal_lm as load
    check_model_dir(path, "model")
    return load(path, dtype=dtype, fused_gelu=True)


def resolve_model_dir(path: str) -> str:
    """A run directory (it has final/) -> its final/; anything else is taken as a model directory."""
    final = os.path.join(path, "final")
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(final):
        return final
    return path


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    context: int
    """Positions the model can attend over: prompt + completion tokens must fit."""
    quantize: str
    weight_bytes: int
    """Bytes held by parameters and buffers after quantisation."""
    kind: str = "generate"


def _context(model) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(cfg, key, None), int):
            return int(getattr(cfg, key))
    return 2048


def weight_bytes(model) -> int:
    """Bytes of the weights as stored (int8 packed weights included), each tensor counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        elif isinstance(t, (tuple, list)):
            for x in t:
                add(x)

    for value in model.state_dict().values():
        add(value)
    return total


def contiguous_head_input(model):
    """Make the LM head's input contiguous. transformers passes it `hidden[:, -1:, :]` (logits_to_keep=1), a
    strided view; for a (B, 1, H) view in bf16 PyTorch's CPU matmul then takes a batched path that first
    copies the (V, H) weight B times: measured for gpt2-small, 32 prompts of 16 tokens, one thread: a 20.9 s
    prefill, 18.7 s of it in that copy; 0.7 s with the input made contiguous (a (B, H) copy)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def own_memory(model):
    """Copy every parameter and buffer into memory of its own. transformers maps the safetensors file
    (privately); while any tensor still points into that mapping (an int8 layer's fp32 bias is enough),
    every page of the file read while loading stays resident: measured for int8 gpt2-small, 1250 MiB RSS
    after loading with the mapping kept."""
    for t in list(model.parameters()) + list(model.buffers()):
        t.data = t.data.clone()


def release_freed_memory():
    """Hand what loading freed back to the OS (glibc keeps freed blocks in its arenas unless asked)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass
class LoadedReward:
    """A reward model served on /v1/rewards: loaded exactly as a trainer loads its reward source (models.py
    load_reward_model: fp32, dropout off), so that its scores are the local reward model's."""
    name: str
    model: torch.nn.Module
    """The RewardModel: trunk + scalar head."""
    tokenizer: object
    context: int
    quantize: str = "none"
    """Always fp32: --quantize applies to the generating models only."""
    weight_bytes: int = 0
    kind: str = "reward"


def is_reward_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(resolve_model_dir(path), "reward_head.safetensors"))


def load_served_reward(name: str, path: str) -> LoadedReward:
    from ..models import load_reward_model
    rm, tokenizer = load_reward_model(resolve_model_dir(path))
    rm.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"reward model '{path}': its tokenizer has no pad or eos token")
    return LoadedReward(name=name, model=rm, tokenizer=tokenizer, context=_context(rm.lm),
                        weight_bytes=weight_bytes(rm))


def load_served_model(name: str, path: str, quantize_mode: str = "none") -> LoadedModel:
    model_dir = resolve_model_dir(path)
    model = load_causal_lm(model_dir)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model '{path}': its tokenizer has no eos token")
    model.eval().requires_grad_(False)
    set_attention(model, "tinyrlhf")  # CPU: batched-matmul attention for short inputs (tinyrlhf/attention.py)
    own_memory(model)
    model = quantize(model, quantize_mode)
    contiguous_head_input(model)
    release_freed_memory()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, context=_context(model),
                       quantize=quantize_mode, weight_bytes=weight_bytes(model))
