"""Model directories in and out: `load_causal_lm`, the one loader every part of tinyrlhf uses, and the
unmerged-LoRA side of `models.save_hf`.

A run trained with LoRA and `lora.merge=false` writes its final/ as a peft adapter directory:
adapter_config.json, adapter_model.safetensors and the tokenizer files, and no config.json, so both
    peft.AutoPeftModelForCausalLM.from_pretrained(final)      (the adapter on its base)
    transformers.AutoModelForCausalLM.from_pretrained(final)  (transformers' own peft integration)
load it from any working directory. adapter_config.json names the base by its ABSOLUTE path;
base_model.json beside it also records that path relative to final/ (so a runs/ tree moved as a whole
still loads in tinyrlhf) and the SHA-256 of the base's weight files (so tinyrlhf never applies an
adapter to weights it was not trained on). A base that is not a plain model directory (a random-init
preset, or itself an adapter) is written to final/base/.

When the named base is missing, tinyrlhf looks for it, in this order: the path recorded relative to
final/; for a relative name (older runs, or an adapter written elsewhere), final/ and each directory
above it (the run directory, runs/, the project the run was started from); then the current directory.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import re
import warnings

import torch

from .errors import ConfigError

BASE_FILE = "base_model.json"
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def is_adapter_dir(path: str) -> bool:
    """True for a peft adapter directory (an unmerged LoRA final/)."""
    return bool(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) or is_adapter_dir(path)


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.__class__.__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: the {what} is not a JSON object")
    return obj


_SHA_CACHE: dict[tuple, str] = {}


def weights_sha256(model_dir: str) -> str:
    """SHA-256 over a model directory's weight files (*.safetensors, *.bin), in name order (0.9 s for
    gpt2-small's 475 MiB here; remembered per file size and modification time within a process)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")) + glob.glob(os.path.join(model_dir, "*.bin")))
    key = tuple((os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.basename(f).encode())
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def find_relative(path: str, anchor: str) -> str | None:
    """A relative `path` that exists under `anchor` or a directory above it, else under the current
    directory; None if nowhere. (Run configs name models relative to where the run was started.)"""
    if os.path.isabs(path):
        return path if os.path.exists(path) else None
    d = os.path.abspath(anchor)
    while True:
        if os.path.exists(candidate := os.path.join(d, path)):
            return candidate
        if (parent := os.path.dirname(d)) == d:
            break
        d = parent
    return os.path.abspath(path) if os.path.exists(path) else None


def adapter_base(adapter_dir: str) -> str:
    """The base model directory of an adapter directory (see the module docstring for the search)."""
    named = _read_json(os.path.join(adapter_dir, ADAPTER_CONFIG), "adapter config").get("base_model_name_or_path")
    named = named if isinstance(named, str) else ""
    info_file = os.path.join(adapter_dir, BASE_FILE)
    info = _read_json(info_file, "base model record") if os.path.isfile(info_file) else {}
    candidates = [named] if named and os.path.isabs(named) else []
    if isinstance(info.get("relative"), str):
        candidates.append(os.path.normpath(os.path.join(adapter_dir, info["relative"])))
    if named and not os.path.isabs(named) and (found := find_relative(named, adapter_dir)):
        candidates.append(found)
    expected, changed = info.get("weights_sha256"), None
    for base in candidates:
        if not _is_model_dir(base) or os.path.abspath(base) == os.path.abspath(adapter_dir):
            continue
        if expected and weights_sha256(base) != expected:
            changed = changed or base
            continue
        return base
    if changed:
        raise ConfigError(f"LoRA adapter '{adapter_dir}': its base '{changed}' holds other weights than the ones "
                          "it was trained on (weights_sha256 in base_model.json differs)")
    raise ConfigError(f"LoRA adapter '{adapter_dir}': its base model '{named or '(none named)'}' is not found "
                      "(looked beside final/, in the directories above it and here); restore it or point "
                      "base_model_name_or_path in adapter_config.json at a copy")


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def resolve_model_path(path: str, what: str = "model.path") -> str:
    """A local model directory for `path`: the path itself when it exists, else, for a name of the Hugging
    Face hub's shape ('gpt2', 'org/name'), its snapshot in the hub cache (~/.cache/huggingface; HF_HOME or
    HF_HUB_CACHE move it): taken from the cache when it is there (no network), else downloaded once
    (weights, configs and tokenizer files only). Offline, or with HF_HUB_OFFLINE=1, a name that is not in
    the cache is one ConfigError that says so."""
    if not path or os.path.exists(path) or not HUB_NAME.fullmatch(path) or path.endswith((".json", ".jsonl")):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    try:
        return snapshot_download(path, allow_patterns=HUB_FILES, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        pass
    try:
        return snapshot_download(path, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError:  # no network, or HF_HUB_OFFLINE=1
        raise ConfigError(f"{what} '{path}': no such local directory, and as a Hugging Face hub name it is not "
                          "in the cache and cannot be downloaded from here (offline); run once on a machine with "
                          "internet (it is kept in ~/.cache/huggingface) or give a local directory") from None
    except (RepositoryNotFoundError, GatedRepoError, HFValidationError):
        raise ConfigError(f"{what} '{path}': no such local directory, and no model of that name on the Hugging "
                          "Face hub (or it is private or gated)") from None
    except (HfHubHTTPError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{what} '{path}': no such local directory, and downloading it from the Hugging Face "
                          f"hub failed ({why})") from None


def check_model_dir(path: str, what: str = "model directory"):
    """Raise a one-line ConfigError naming `what` unless `path` is a loadable model directory
    (model_dir.check_model_dir: config, complete weights, tokenizer) or an unmerged LoRA final/ whose
    adapter files are complete and whose base passes the same check."""
    from .model_dir import check_model_dir as check_plain, weight_file_problem
    if is_adapter_dir(path):
        for name in sorted(os.listdir(path)):
            if (problem := weight_file_problem(os.path.join(path, name))) is not None:
                raise ConfigError(f"{what} '{path}': {problem}")
        check_plain(adapter_base(path), f"{what} '{path}': its base model")
    else:
        check_plain(path, what)


FUSED_GELU = "gelu_pytorch_tanh"


def use_fused_gelu(config):
    """GPT-2's "gelu_new" is the tanh GELU written as separate elementwise ops, each keeping a 4H-wide
    tensor for backward; "gelu_pytorch_tanh" is the same function (max difference 2.4e-7) as one fused
    kernel. Measured on gpt2-small (fp32, batch 8 x 88): forward+backward memory 1428 -> 702 MiB."""
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = FUSED_GELU


def unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_causal_lm(path: str, *, dtype: torch.dtype = torch.float32, fused_gelu: bool = False):
    """A causal LM from a model directory or an unmerged LoRA final/, whose adapters are merged in memory
    (inference and further training then see one plain model). `config._name_or_path` is set to `path`,
    so reloading from it gives the same weights. `fused_gelu`: see use_fused_gelu."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if is_adapter_dir(path):
        from peft import PeftModel
        base = load_causal_lm(adapter_base(path), dtype=dtype, fused_gelu=fused_gelu)
        with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
        model.requires_grad_(True)  # peft froze the base; a full fine-tune from this model trains it all
    else:
        check_model_dir(path)
        config = AutoConfig.from_pretrained(path)
        if fused_gelu:
            use_fused_gelu(config)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    model.config._name_or_path = path
    return model


def tokenizer_dir(path: str) -> str:
    """Where a model's tokenizer lives: the directory itself, or an adapter's base if it has none."""
    if is_adapter_dir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        return adapter_base(path)
    return path


STAGING = ".final.partial"  # where a run writes final/ before publishing it (train/rundir.py)


def save_adapter(model, tokenizer, out: str):
    """Write an unmerged LoRA model as a peft adapter directory that names its base by absolute path
    (see the module docstring). The base is `config._name_or_path` when that is a plain model
    directory; otherwise (a preset, or a base that is itself an adapter) it is written to out/base/."""
    out = os.path.abspath(out)
    source = unwrap(model).config._name_or_path or ""
    if source and os.path.isfile(os.path.join(source, "config.json")) and not is_adapter_dir(source):
        base_dir = os.path.abspath(source)
    else:
        base_dir = os.path.join(out, "base")
        # the base weights in fp32: reloaded from an adapter source (its frozen copy may be bf16), else
        # the peft model with its adapters removed (a random-init preset is never stored in bf16)
        base = load_causal_lm(source) if source and is_adapter_dir(source) else copy.deepcopy(model).unload()
        base.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        del base
    # A run stages final/ as .final.partial and renames it when finished (train/rundir.py): a base saved
    # inside it is named by the path it will have after that rename, so peft finds it from anywhere.
    on_disk = base_dir
    if os.path.basename(out) == STAGING and base_dir.startswith(out + os.sep):
        base_dir = os.path.join(os.path.dirname(out), "final", os.path.relpath(base_dir, out))
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base_dir
    model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors (+ peft's README.md)
    tokenizer.save_pretrained(out)
    stale = os.path.join(out, "config.json")  # a config.json would make transformers look for full weights
    if os.path.isfile(stale):
        os.remove(stale)
    record = {"base_model": base_dir, "relative": os.path.relpath(on_disk, out),
              "weights_sha256": weights_sha256(on_disk)}
    with open(os.path.join(out, BASE_FILE), "w") as f:
        json.dump(record, f, indent=2)
