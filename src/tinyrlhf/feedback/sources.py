"""Where the things to label come from: prompts (a task's or a file's), outputs sampled from 1+ models or
read from a file, and the models that answer a person's own prompt in the arena.

--outputs FILE is JSONL, one prompt per line: {"prompt": str, "outputs": [{"model": str, "text": str}, ...]}
(a pair item takes exactly 2 outputs, a ranking item 3 or more, and in binary mode every output becomes its
own item). Sampled items: pair mode draws two different models per prompt (one model: two samples of it),
ranking mode one sample from each model (at least 3 models, or samples of fewer models up to K=3), binary
mode one sample per model.
"""
from __future__ import annotations

import random
import threading

from tqdm.auto import tqdm

from ..data.records import parse_jsonl_lines
from ..errors import DataError, TinyRLHFError
from .checks import StoreError, check_items

MODES = ("pair", "ranking", "binary", "arena")
SAMPLE_CHUNK = 16  # prompts per sampling call while `label` prepares its items (the progress bar's unit)


def read_outputs_file(path: str, mode: str) -> list[dict]:
    """Items from an --outputs file; DataError naming the file, line and field."""
    items = []
    for line, obj in parse_jsonl_lines(path):
        if isinstance(obj, DataError):
            raise obj
        where = {"path": path, "line": line}
        if not isinstance(obj, dict):
            raise DataError("expected an object {\"prompt\", \"outputs\"}", **where)
        if not isinstance(obj.get("prompt"), str):
            raise DataError("missing or not a string", field="prompt", **where)
        outs = obj.get("outputs")
        if not isinstance(outs, list) or not outs:
            raise DataError("expected a non-empty list of {\"model\", \"text\"}", field="outputs", **where)
        kind = "pair" if mode == "arena" else mode
        group = [[o] for o in outs] if kind == "binary" else [outs]
        for g in group:
            item = {"prompt": obj["prompt"], "kind": kind, "outputs": g}
            try:
                check_items([item], "item")
            except StoreError as e:
                raise DataError(str(e).split(": ", 1)[1], **where) from None
            items.append(item)
    if not items:
        raise DataError("no items (the file is empty)", path=path)
    return items


def task_prompts(task: str, n: int, seed: int) -> list[str]:
    """Held-out prompts of a built-in task (its eval split)."""
    from ..tasks import get_task
    return get_task(task).prompts("eval", n, seed)


def file_prompts(path: str, n: int, columns: dict | None = None) -> list[str]:
    from ..data.formats import load_prompts
    return [r.prompt for r in load_prompts(path, columns=columns, max_records=n)]


class Models:
    """Models loaded for sampling (`tinyrlhf serve`'s loader: run dirs, final/, HF dirs, LoRA), each behind
    one lock: generate() may be called from the app's thread pool."""

    def __init__(self, specs: list[str]):
        from ..serve.config import parse_model_specs
        from ..serve.loader import load_served_model

        self.models = {s.name: load_served_model(s.name, s.path) for s in parse_model_specs(specs)}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def generate(self, name: str, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]:
        """Completions of model `name`, each prompt rendered in the prompt format the model was trained on
        (data/templates.py: a plain question becomes '\n\nHuman: ...\n\nAssistant:' for an hh model)."""
        from ..data.templates import render_prompt, template_of
        from ..sampling import sample

        m = self.models[name]
        template = template_of(m.tokenizer)
        rendered = [render_prompt(p, template, m.tokenizer) for p in prompts]
        with self._lock:
            return sample(m.model, m.tokenizer, rendered, max_new_tokens=max_new_tokens, temperature=temperature,
                          seed=seed)


def sampled_items(models: Models, prompts: list[str], mode: str, *, max_new_tokens: int, temperature: float,
                  seed: int) -> list[dict]:
    """Items for `mode` on `prompts` with outputs sampled now from `models` (see the module docstring)."""
    names = models.names
    if not prompts:
        raise TinyRLHFError("no prompts to label")
    rng = random.Random(seed)
    if mode in ("pair", "arena"):
        if len(names) == 1:
            plan = [[names[0], names[0]] for _ in prompts]
        else:
            plan = [rng.sample(names, 2) for _ in prompts]
    elif mode == "ranking":
        k = max(3, len(names))
        plan = [[names[i % len(names)] for i in range(k)] for _ in prompts]
    else:
        plan = [[n] for n in names for _ in prompts]
        prompts = [p for _ in names for p in prompts]
    texts: dict[tuple[int, int], str] = {}
    total = sum(len(row) for row in plan)
    with tqdm(total=total, desc=f"sampling {total} outputs to label", unit="output", dynamic_ncols=True) as bar:
        for name in names:  # batched calls per model and slot, in chunks that show progress
            slots = sorted({j for row in plan for j, n in enumerate(row) if n == name})
            for j in slots:
                idx = [i for i, row in enumerate(plan) if j < len(row) and row[j] == name]
                for k in range(0, len(idx), SAMPLE_CHUNK):  # each chunk draws from its own seed
                    part = idx[k:k + SAMPLE_CHUNK]
                    outs = models.generate(name, [prompts[i] for i in part], max_new_tokens=max_new_tokens,
                                           temperature=temperature, seed=seed * 1000 + j + 7919 * k)
                    texts.update({(i, j): t for i, t in zip(part, outs)})
                    bar.set_postfix(model=name)
                    bar.update(len(part))
    kind = "pair" if mode == "arena" else mode
    return [{"prompt": prompts[i], "kind": kind,
             "outputs": [{"model": n, "text": texts[(i, j)]} for j, n in enumerate(row)]}
            for i, row in enumerate(plan)]
