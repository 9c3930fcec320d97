"""Build or load causal LMs and tokenizers, add LoRA (peft), and the reward model (LM trunk + scalar head).

A model is a local Hugging Face directory, a model of the Hugging Face hub by name (taken from the hub cache,
downloaded into it once: loading.resolve_model_path), or a named preset built from a config with random
weights (its tokenizer a byte-level BPE trained on the task's text or the run's own data).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config,
                          PreTrainedTokenizerFast)

from .attention import CHOICES as ATTENTION_CHOICES, set_attention
from .config import LoRAConfig, ModelConfig
from .data import packing
from .data.collate import pad
from .errors import ConfigError
from .loading import (FUSED_GELU, check_model_dir, load_causal_lm, resolve_model_path, save_adapter, tokenizer_dir,
                      unwrap)

EOS = "<|endoftext|>"

# name -> GPT-2 config kwargs. gpt2-small is the 124M shape (vocab 50257, 1024 positions).
PRESETS = {
    "gpt2-tiny": dict(n_layer=2, n_head=4, n_embd=128, n_positions=256),
    "gpt2-mini": dict(n_layer=4, n_head=4, n_embd=256, n_positions=512),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
}


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained on `texts`, with <|endoftext|> as eos, bos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS, unk_token=EOS)


def load_tokenizer(path: str):
    """The tokenizer of a model directory or an unmerged LoRA final/ (its base's when it has none)."""
    where = tokenizer_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except Exception as e:  # the tokenizer library raises plain Exceptions on a corrupt tokenizer.json
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"'{where}': cannot load its tokenizer ({why})") from None
    if len(tok) < 2:
        raise ConfigError(f"'{where}': its tokenizer has {len(tok)} token(s); the tokenizer files are incomplete")
    if tok.eos_token is None:
        raise ConfigError(f"'{where}': its tokenizer has no eos token (completions end with one)")
    if tok.pad_token is None:  # GPT-2's own tokenizer has no pad token: pad with eos (masked anyway)
        tok.pad_token = tok.eos_token
    return tok


def build_model(cfg: ModelConfig, corpus: list[str] | None = None, seed: int = 0):
    """(model, tokenizer) from a local directory or a random-init preset. `corpus` trains the
    preset's tokenizer; a preset needs one (the task's text)."""
    if cfg.attention not in ATTENTION_CHOICES:
        raise ConfigError(f"model.attention '{cfg.attention}' is unknown; valid: {', '.join(ATTENTION_CHOICES)}")
    if cfg.path:
        path = resolve_model_path(cfg.path, "model.path")  # a hub name ('gpt2'): its snapshot in the HF cache
        check_model_dir(path, "model.path")  # a model directory, or an unmerged LoRA final/ (merged in memory)
        tokenizer = load_tokenizer(path)
        try:
            model = load_causal_lm(path, dtype=torch.float32, fused_gelu=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # what check_model_dir cannot see
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"model.path '{cfg.path}': cannot load the model ({why})") from None
        set_dropout(model, cfg.dropout)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:  # a token id past the embedding would fail mid-run with an IndexError
            raise ConfigError(f"model.path '{cfg.path}': the tokenizer has {len(tokenizer)} tokens but the "
                              f"model's embedding only {rows} rows (tokenizer from another model?)")
    else:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"model.preset '{cfg.preset}' is unknown; valid: {', '.join(PRESETS)}")
        if not corpus:
            raise ConfigError(f"model.preset {cfg.preset} needs text to train its tokenizer: your data "
                              "(data.train_file, data.dataset or data.dir) or a built-in data.task; or start from "
                              "model.path")
        tokenizer = train_tokenizer(corpus, cfg.tokenizer_vocab)
        kwargs = dict(PRESETS[cfg.preset])
        # round the vocabulary up to a multiple of 64: faster matmuls, spare rows are never used
        vocab = max(kwargs.pop("vocab_size", 0), -(-len(tokenizer) // 64) * 64)
        config = GPT2Config(vocab_size=vocab, bos_token_id=tokenizer.eos_token_id, activation_function=FUSED_GELU,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
                            **kwargs)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    set_attention(model, cfg.attention)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tokenizer


def set_dropout(model: nn.Module, p: float):
    """RLHF detail (lm-human-preference-details): dropout off, so log-probs and values are deterministic."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)


def add_lora(model, cfg: LoRAConfig):
    """Wrap with peft LoRA adapters if enabled; the frozen base then doubles as the reference model."""
    if not cfg.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise ConfigError(f"lora.target_modules {list(cfg.target_modules)} match no module of this model")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", fan_in_fan_out=model.config.model_type == "gpt2")
    with warnings.catch_warnings():
        # peft (0.21.2, the latest) reads transformers' deprecated `is_gradient_checkpointing` while wrapping
        # any model, which warns on every LoRA run; nothing in this call can avoid it
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora)


def _adapted_layers(model):
    """(name, base layer) of every LoRA-adapted Linear / GPT-2 Conv1D, names as in the unwrapped model."""
    from transformers.pytorch_utils import Conv1D

    for name, module in unwrap(model).named_modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, (nn.Linear, Conv1D)):
            yield name, base


def store_frozen_base(model, dtype: torch.dtype) -> int:
    """Keep the frozen weights and biases of the LoRA-adapted layers in `dtype` (bf16 under bf16 autocast,
    whose matmuls cast them to bf16 anyway: same results, half the memory, and no cast kept for backward).
    Embeddings, norms and the LM head stay fp32: their ops run in fp32 under autocast. The other frozen
    fp32 tensors are copied into memory of their own, so the model file's mapping (whose pages the
    conversion read) is released. Returns the number of tensors converted."""
    n = 0
    for _, base in _adapted_layers(model):
        for p in base.parameters(recurse=False):
            if not p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += 1
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.clone()
    return n


def _restore_fp32_base(model, source: str):
    """Put the fp32 weights of `source` (the directory the base came from) back under the adapted layers,
    checking that they round to the stored ones (else the directory changed during the run)."""
    fresh = dict(load_causal_lm(source, dtype=torch.float32).named_modules())
    for name, base in _adapted_layers(model):
        for key, p in base.named_parameters(recurse=False):
            original = getattr(fresh[name], key).data.to(p.device)
            if p.dtype != original.dtype:
                if not torch.equal(original.to(p.dtype), p.data):
                    raise ConfigError(f"cannot merge LoRA: the weights in '{source}' ({name}.{key}) are not the "
                                      "ones this run started from; save with lora.merge=false")
                p.data = original


def trunk_and_head(model):
    """(transformer trunk, lm_head) of a causal LM, so callers can apply the head to chosen rows only."""
    base = unwrap(model)
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def trunk_hidden(trunk, input_ids, attention_mask=None, seq_ids=None):
    """The trunk's last hidden states (B, T, H) of a right- or left-padded batch (`attention_mask`; positions
    counted over real tokens) or of a packed one (`seq_ids`, data/packing.py: positions restart at every
    sequence and a block-diagonal mask keeps each sequence to itself). The packed mask is passed as 4-D, not
    left to transformers' detection of packing from position_ids, which silently stops working whenever a
    key/value cache exists (GPT-2 makes one in every forward unless told use_cache=False)."""
    if seq_ids is None:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    mask = packing.block_mask(seq_ids, trunk.get_input_embeddings().weight.dtype)
    return trunk(input_ids=input_ids, attention_mask=mask, position_ids=packing.positions(seq_ids),
                 use_cache=False).last_hidden_state


def save_hf(model, tokenizer, out: str, merge_lora: bool = True):
    """Write a directory loadable by AutoModelForCausalLM / AutoTokenizer: LoRA merged, or the adapter saved
    so that peft's AutoPeftModelForCausalLM loads it from any directory (tinyrlhf.loading.save_adapter)."""
    os.makedirs(out, exist_ok=True)
    if hasattr(model, "get_base_model"):
        if merge_lora:
            import copy
            merged = copy.deepcopy(model)
            if any(p.dtype != torch.float32 for _, base in _adapted_layers(merged) for p in base.parameters()):
                _restore_fp32_base(merged, unwrap(model).config._name_or_path)  # merge in fp32, not bf16
            merged = merged.merge_and_unload()
            merged.save_pretrained(out)
        else:
            save_adapter(model, tokenizer, out)  # adapter + tokenizer, the base named by absolute path
            return
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ---------------------------------------------------------------- reward model

class RewardModel(nn.Module):
    """Causal-LM trunk + scalar head (Ouyang et al. 2022, §3.5).

    pool         where the head reads the trunk: "last" = the last real token (the default, InstructGPT's
                 choice); "mean" = the mean of the hidden states over the completion tokens (needs
                 `completion_mask`), so every answer token contributes its own evidence to the reward.
    logp_feature add `logp_weight` (learned, initialised to 1) times the mean log-prob of the completion
                 tokens under the trunk's own LM head (needs `completion_mask`). From an SFT trunk this
                 starts the reward at the length-normalised SFT likelihood, a prior the pairs then refine.

    `gain` and `bias` are set after training so rewards on SFT samples have mean 0, std 1
    (Ziegler et al. 2019, §2.2 "reward normalisation")."""

    POOLS = ("last", "mean")

    def __init__(self, lm, pool: str = "last", logp_feature: bool = False):
        super().__init__()
        if pool not in self.POOLS:
            raise ConfigError(f"reward model pool '{pool}' is unknown; valid: {', '.join(self.POOLS)}")
        self.lm = lm
        self.pool = pool
        self.logp_feature = logp_feature
        hidden = unwrap(lm).config.hidden_size if hasattr(unwrap(lm).config, "hidden_size") \
            else unwrap(lm).config.n_embd
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        if logp_feature:
            self.logp_weight = nn.Parameter(torch.ones(()))
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    @property
    def needs_completion_mask(self) -> bool:
        return self.pool != "last" or self.logp_feature

    def raw(self, input_ids, attention_mask, completion_mask=None, seq_ids=None):
        """Unnormalised rewards, (B,). Right padding: the last real token is at mask.sum() - 1.
        `completion_mask` (B, T) marks the completion tokens (EOS included); needed unless pool="last"
        and logp_feature is off. A packed batch (data/packing.py) gives `seq_ids` instead of
        `attention_mask`: rewards then come one per sequence, in the order of the padded batch it was made of."""
        if self.needs_completion_mask and completion_mask is None:
            raise ConfigError("this reward model (pool='mean' or logp_feature) needs completion_mask")
        if seq_ids is not None:
            return self._raw_packed(input_ids, seq_ids, completion_mask)
        trunk, lm_head = trunk_and_head(self.lm)
        hidden = trunk_hidden(trunk, input_ids, attention_mask)  # (B, T, H)
        if self.pool == "last":
            last = attention_mask.sum(-1).clamp(min=1) - 1
            h = hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (B, H)
        else:
            m = (completion_mask * attention_mask).to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
            h = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        r = self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()
        if self.logp_feature:
            target = (completion_mask[:, 1:] * attention_mask[:, 1:]).bool()  # token t+1 predicted at t
            logits = lm_head(hidden[:, :-1][target]).float()  # completion positions only: (N, V)
            lp = -nn.functional.cross_entropy(logits, input_ids[:, 1:][target], reduction="none")
            total = torch.zeros(r.shape, dtype=lp.dtype, device=lp.device)
            total = total.index_add(0, target.nonzero()[:, 0], lp)
            r = r + self.logp_weight * total / target.sum(-1).clamp(min=1)
        return r

    def _raw_packed(self, input_ids, seq_ids, completion_mask):
        """`raw` of a packed batch: the same reads (last token, completion mean, completion log-prob mean),
        gathered per sequence instead of per row."""
        trunk, lm_head = trunk_and_head(self.lm)
        hidden = trunk_hidden(trunk, input_ids, seq_ids=seq_ids)  # (R, C, H)
        n = packing.n_sequences(seq_ids)
        if self.pool == "last":
            h = hidden.flatten(0, 1)[packing.last_tokens(seq_ids, n)]  # (n, H)
        else:
            m = completion_mask.to(hidden.dtype).unsqueeze(-1)  # padding carries 0
            h = packing.per_sequence_sum(hidden * m, seq_ids, n) / \
                packing.per_sequence_sum(m, seq_ids, n).clamp(min=1)
        r = self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()
        if self.logp_feature:
            target = completion_mask[:, 1:].bool() & packing.same_sequence(seq_ids)  # token t+1 predicted at t
            logits = lm_head(hidden[:, :-1][target]).float()
            lp = -nn.functional.cross_entropy(logits, input_ids[:, 1:][target], reduction="none")
            owner = seq_ids[:, 1:][target]
            total = torch.zeros(n, dtype=lp.dtype, device=lp.device).index_add(0, owner, lp)
            count = torch.zeros(n, dtype=lp.dtype, device=lp.device).index_add(0, owner, torch.ones_like(lp))
            r = r + self.logp_weight * total / count.clamp(min=1)
        return r

    def forward(self, input_ids, attention_mask, completion_mask=None):
        return self.raw(input_ids, attention_mask, completion_mask) * self.gain + self.bias


SCORE_BATCH = 64
"""Pairs a reward model scores in one forward pass (the local reward source and `serve`'s /v1/rewards alike,
so that both pad the same rows together and give the same floats)."""


@torch.no_grad()
def score_encoded(rm: RewardModel, examples: list[tuple[list[int], list[int]]], pad_id: int, device,
                  autocast=contextlib.nullcontext, batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """Rewards, (B,) float32 on the CPU, of (prompt ids, completion ids) pairs (data/collate.encode: EOS
    appended, truncated as training does), right-padded `batch_size` rows at a time."""
    out = [torch.zeros(0)]
    for i in range(0, len(examples), batch_size):
        b = {k: v.to(device) for k, v in pad(examples[i:i + batch_size], pad_id).items()}
        with autocast():
            out.append(rm(b["input_ids"], b["attention_mask"], b["completion_mask"]).float().cpu())
    return torch.cat(out)


def save_reward_model(rm: RewardModel, tokenizer, out: str):
    """final/: the trunk as a causal-LM HF directory + reward_head.safetensors + reward_head.json
    (gain, bias and, when not the defaults, pool and logp_feature)."""
    from safetensors.torch import save_file

    save_hf(rm.lm, tokenizer, out, merge_lora=True)
    tensors = {"weight": rm.head.weight.detach().float().contiguous(),
               "bias": rm.head.bias.detach().float().contiguous()}
    if rm.logp_feature:
        tensors["logp_weight"] = rm.logp_weight.detach().float().reshape(1).contiguous()
    save_file(tensors, os.path.join(out, "reward_head.safetensors"))
    meta = {"gain": float(rm.gain), "bias": float(rm.bias)}
    if getattr(rm, "normalized_on", None):  # what the gain and bias were computed on (train/reward.py)
        meta["normalized_on"] = rm.normalized_on
    if rm.pool != "last" or rm.logp_feature:
        meta.update(pool=rm.pool, logp_feature=rm.logp_feature)
    with open(os.path.join(out, "reward_head.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_reward_model(path: str) -> tuple[RewardModel, object]:
    """Load a reward model written by `save_reward_model` (a reward run's final/)."""
    from safetensors.torch import load_file

    check_model_dir(path, "reward model")  # also checks reward_head.safetensors, as every *.safetensors
    head_file = os.path.join(path, "reward_head.safetensors")
    if not os.path.isfile(head_file):
        raise ConfigError(f"'{path}' is not a reward model directory (no reward_head.safetensors)")
    try:
        with open(os.path.join(path, "reward_head.json"), encoding="utf-8") as f:
            norm = json.load(f)
        float(norm["gain"]), float(norm["bias"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"reward model '{path}': reward_head.json is missing or corrupt ({e})") from None
    lm = load_causal_lm(path, dtype=torch.float32)
    set_dropout(lm, 0.0)
    set_attention(lm, ATTENTION_CHOICES[0])
    rm = RewardModel(lm, pool=norm.get("pool", "last"), logp_feature=norm.get("logp_feature", False))
    head = load_file(head_file)
    rm.head.weight.data.copy_(head["weight"])
    rm.head.bias.data.copy_(head["bias"])
    if rm.logp_feature:
        rm.logp_weight.data.copy_(head["logp_weight"].reshape(()))
    rm.gain.fill_(norm["gain"])
    rm.bias.fill_(norm["bias"])
    rm.normalized_on = norm.get("normalized_on")
    return rm.eval(), load_tokenizer(path)


def model_config_dict(path: str) -> dict:
    return AutoConfig.from_pretrained(path).to_dict()
