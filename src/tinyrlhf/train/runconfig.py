"""What makes two run configs the same run (rundir.RunDir's identity check), and the readable new out_dir
suggested when they differ."""
from __future__ import annotations

import dataclasses
import math
import os
import re

from ..config import config_to_dict

HARMLESS = ("out_dir", "train.threads", "train.progress", "train.stop_after", "train.resume", "train.force_new",
            "train.device", "train.packing", "train.save_every", "train.save_minutes", "train.log_every",
            "train.eval_every", "ref_cache_dir", "train.report_to", "train.tracking_dir", "train.run_name",
            "train.tracking_project", "train.tracking_group", "reward_http.timeout_s", "reward_http.retries",
            "reward_http.backoff_s", "reward_http.api_key_env")
"""Keys that may differ between the run on disk and the command that continues or reuses it: where and
how fast it runs, when it logs, evaluates and checkpoints, where caches live, which trackers see its
metrics, how patiently a served reward model is asked. None changes the weights beyond rounding (the device
and packing change the order of float sums; evaluation samples on its own RNG stream; checkpoints do not
touch RNG state)."""


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def config_differences(old: dict, new_cfg) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for every key of `new_cfg` that differs from the run on disk, HARMLESS
    keys aside. A key missing on disk (added to tinyrlhf since) counts as its default."""
    new = flat(config_to_dict(new_cfg))
    old = {**_defaults(type(new_cfg)), **flat(old)}
    return [(k, old.get(k), v) for k, v in new.items() if k not in HARMLESS and not _same(old.get(k), v)]


def _defaults(cls) -> dict:
    """Flat defaults of a run config class, read from its fields (the class itself is not constructed:
    it may require some fields)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.update(flat(config_to_dict(value), f"{f.name}.") if dataclasses.is_dataclass(value)
                   else {f.name: list(value) if isinstance(value, tuple) else value})
    return out


def _short(key: str, value) -> str:
    """One readable word for a changed key: lr3e-4, max_steps1, seed2, lora, no-lora, ipo; a path gives its
    file's stem (my_sft) or, for a run's final/, the run's name."""
    parts = key.split(".")
    name = parts[-2] if parts[-1] == "enabled" and len(parts) > 1 else parts[-1]
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    if isinstance(value, float):
        if value and abs(value) < 1e-2:  # 3e-4, not 0.0003
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{name}{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{name}{value:g}"
    text = str(value)
    if "/" in text or os.sep in text or re.search(r"\.(jsonl?|csv|parquet|gz)$", text):  # a path: its name
        parts = [p for p in re.split(r"[/\\]", text) if p]
        text = (parts[-2] if len(parts) > 1 and parts[-1] == "final" else parts[-1] if parts else "").split(".")[0]
    elif len(text) < 6 and not isinstance(value, str) or not text:
        text = f"{name}{text or 'none'}"
    return re.sub(r"[^A-Za-z0-9._+-]", "", text)[:24]


def suggest_out_dir(out_dir: str, diffs) -> str:
    """A new out_dir for a changed config: the old one plus up to two short words for what changed, and
    -2, -3 ... if that exists too (runs/sft + max_steps 1 and a data file -> runs/sft-max_steps1-mydata)."""
    base = out_dir.rstrip("/" + os.sep) + "-" + "-".join(_short(k, v) for k, _, v in diffs[:2])
    n, name = 2, base
    while os.path.exists(name):
        name, n = f"{base}-{n}", n + 1
    return name
