"""Checks that a directory holds a loadable Hugging Face model before anything loads it, so a corrupt or
truncated copy is one clear line naming the directory and the file, not a library traceback mid-run."""
from __future__ import annotations

import json
import os

from .errors import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def check_model_dir(path: str, what: str = "model directory"):
    """One clear ConfigError naming `what` and `path` unless `path` looks like a loadable Hugging Face model
    directory: config.json that parses, weights whose files are complete (a safetensors header must cover
    the whole file; a zip-format .bin must have its central directory), and tokenizer files. Checked before
    anything loads, so a truncated copy fails in a second, not as a library traceback mid-run."""
    def fail(problem: str):
        raise ConfigError(f"{what} '{path}': {problem}")

    if not os.path.isdir(path):
        fail("no such directory" if not os.path.exists(path) else "not a directory")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        fail("not a Hugging Face model directory (no config.json)")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except UnicodeDecodeError:
        fail("config.json is not UTF-8 text")
    except json.JSONDecodeError as e:
        fail(f"config.json is not valid JSON (line {e.lineno}: {e.msg})")
    if not isinstance(config, dict) or "model_type" not in config:
        fail("config.json has no model_type (not a transformers config)")
    present = [n for n in WEIGHT_FILES if os.path.isfile(os.path.join(path, n))]
    if not present:
        fail(f"no weights (none of {', '.join(WEIGHT_FILES[::2])})")
    for name in sorted(os.listdir(path)):
        if (problem := weight_file_problem(os.path.join(path, name))) is not None:
            fail(problem)
    if not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_FILES):
        fail(f"no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); copy them from the model it was "
             "trained from")


def weight_file_problem(file: str) -> str | None:
    """What is wrong with one weights file (None if nothing we can see cheaply)."""
    name = os.path.basename(file)
    if name.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(file, "pt") as f:
                f.keys()
        except Exception as e:  # SafetensorError and OSError: the header does not describe this file
            return f"{name} is truncated or corrupt ({str(e).splitlines()[0]})"
    elif name.endswith(".bin"):
        import zipfile
        with open(file, "rb") as f:
            zipped = f.read(2) == b"PK"  # torch.save's format since 1.6; older pickles are left to torch
        if zipped and not zipfile.is_zipfile(file):
            return f"{name} is truncated or corrupt (no zip central directory)"
    elif name.endswith(".index.json"):
        try:
            with open(file, encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{name} is not a valid shard index"
        missing = sorted(s for s in shards if not os.path.isfile(os.path.join(os.path.dirname(file), s)))
        if missing:
            return f"{name} lists missing shard(s): {', '.join(missing)}"
    return None
