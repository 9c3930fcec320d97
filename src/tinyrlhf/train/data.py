"""Where a run's records come from: a `tinyrlhf data` directory (generated on first use for a built-in
task), explicit files in any supported format, or a dataset by hub name or directory (data.dataset, read
through the same loaders). Shared by every offline loop."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from ..config import DataConfig
from ..data import records as R
from ..errors import ConfigError

# record kind -> (train file, eval file) in a task data directory
FILES = {"sft": ("sft.jsonl", "eval_prompts.jsonl"), "pair": ("pairs.jsonl", "eval_pairs.jsonl"),
         "binary": ("binary.jsonl", "eval_pairs.jsonl")}


def task_data_dir(cfg: DataConfig) -> str:
    """The task data directory, written by the task generator when it does not exist yet."""
    path = cfg.dir or os.path.join("runs", "data", f"{cfg.task}-seed{cfg.seed}")
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        if not cfg.task:
            raise ConfigError(f"data.dir '{path}' has no manifest.json and no data.task is set to generate it")
        from ..tasks.generate import write_task_data
        write_task_data(cfg.task, path, seed=cfg.seed)
    return path


def dataset_split(cfg: DataConfig, key: str = "split"):
    """The rows of data.dataset's split data.split (key="split") or data.eval_split (data/hub.py)."""
    from ..data.hub import open_dataset
    return open_dataset(cfg.dataset, split=getattr(cfg, key), subset=cfg.subset, split_key=f"data.{key}")


def eval_source(cfg: DataConfig):
    """The explicit held-out data: data.eval_file, data.eval_split's rows, or None."""
    return cfg.eval_file or (dataset_split(cfg, "eval_split") if cfg.eval_split else None)


def _load(path, kind: str, cfg: DataConfig, skipped: R.SkipCounter):
    """The `kind` records of a file path or of a dataset's rows (data/hub.py's DatasetRows)."""
    from .. import data as D

    fmt, columns = cfg.format, cfg.columns.mapping()
    if columns is None and fmt in ("auto", "jsonl") and isinstance(path, str) and path.endswith(".jsonl") \
            and _is_project_format(path, kind):
        return R.read_records(path, kind, skip_bad=cfg.skip_bad, skipped=skipped)
    loader = {"sft": D.load_sft, "pair": D.load_preferences}.get(kind, D.load_binary)
    return loader(path, format=fmt, columns=columns, skip_bad=cfg.skip_bad, skipped=skipped)


def _is_project_format(path: str, kind: str) -> bool:
    """True if the first record has the project's own keys for `kind` (else a public-format loader runs)."""
    import json
    keys = {"sft": {"prompt", "completion"}, "pair": {"prompt", "chosen", "rejected"},
            "binary": {"prompt", "completion", "label"}}[kind]
    if not os.path.isfile(path):
        return True  # a directory or a missing file: the strict reader names the problem
    with open(path, encoding="utf-8", errors="replace") as f:  # a bad byte: the strict reader names its line
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return True  # let the strict reader report the line
                return isinstance(obj, dict) and keys <= set(obj)
    return True


def load_records(cfg: DataConfig, kind: str) -> tuple[list, list, dict]:
    """(train records, eval records, data metrics) for record `kind` ('sft', 'pair', 'binary')."""
    skipped = R.SkipCounter()
    for key in ("train_file", "eval_file"):  # given explicitly: it must be there (never silently skipped)
        if getattr(cfg, key):
            R.check_data_file(getattr(cfg, key), f"data.{key}")
    if cfg.train_file or cfg.dataset:
        train = _load(cfg.train_file or dataset_split(cfg), kind, cfg, skipped)
        held_out = eval_source(cfg)
        evals = _load(held_out, kind, cfg, skipped) if held_out is not None else []
    else:
        if not cfg.task and not cfg.dir:
            raise ConfigError("no data: set data.task (built-in task), data.dir, data.train_file or data.dataset")
        d = task_data_dir(cfg)
        train_name, eval_name = FILES[kind]
        train = R.read_records(os.path.join(d, train_name), kind, skip_bad=cfg.skip_bad, skipped=skipped)
        eval_path = cfg.eval_file or os.path.join(d, eval_name)
        eval_kind = "pair" if kind == "binary" else kind
        if kind == "sft" and not cfg.eval_file:
            # eval prompts of a task without a reference answer have empty completions: no eval loss
            evals = [R.SFTRecord(o["prompt"], o["completion"]) for _, o in R.iter_jsonl(eval_path)
                     if o.get("completion", "").strip()] if os.path.isfile(eval_path) else []
        else:
            evals = R.read_records(eval_path, eval_kind, skip_bad=cfg.skip_bad, skipped=skipped) \
                if os.path.isfile(eval_path) else []
    if kind == "pair":
        train, evals = R.pairs_from(train), R.pairs_from(evals)
    if cfg.max_train:
        train = train[:cfg.max_train]
    if skipped.count:
        print(f"skipped {skipped.count} bad records; first: {skipped.messages[0]}")
    return train, evals, {"data/skipped": skipped.count, "data/train_records": len(train)}


CORPUS_CHARS = 20_000_000  # a preset's tokenizer trains on at most this much of the run's own text


def record_texts(records: list) -> list[str]:
    """Every text field of `records` (prompts, completions, chosen, rejected, ranked completions), each
    distinct text once, in file order."""
    texts: dict[str, None] = {}
    for r in records:
        for key in ("prompt", "completion", "chosen", "rejected"):
            if isinstance(getattr(r, key, None), str) and getattr(r, key):
                texts[getattr(r, key)] = None
        texts.update(dict.fromkeys(getattr(r, "completions", ()) or ()))
    return list(texts)


@dataclass
class RunStart:
    """What every offline loop starts from (see `begin_run`)."""
    run: object
    device: object
    task: object
    train: list
    evals: list
    data_metrics: dict
    t_start: float = field(default_factory=time.time)

    def corpus(self, data_seed: int) -> list[str] | None:
        """What a preset's tokenizer is trained on: the task's text with data.task, else the run's own
        records (train and held-out: every text field, the first CORPUS_CHARS characters)."""
        if self.task is not None:
            return self.task.corpus(4000, data_seed)
        texts, size = [], 0
        for text in record_texts(self.train + self.evals):
            texts.append(text)
            size += len(text)
            if size >= CORPUS_CHARS:
                break
        return texts or None


def own_data_with_task(cfg: DataConfig) -> str | None:
    """A warning when data.task is set with data.train_file that a `tinyrlhf data` directory of that task
    did not write, or with data.dataset: the task's gold evaluation (and a preset's tokenizer) would then use
    the task's prompts and text, not the file's."""
    if cfg.task and cfg.dataset:
        return (f"warning: data.task={cfg.task} with your own data.dataset={cfg.dataset}: the gold evaluation "
                f"scores {cfg.task}'s own prompts (and a preset's tokenizer learns {cfg.task}'s text), not the "
                "dataset's; leave data.task out unless the dataset holds that task's data")
    if not (cfg.task and cfg.train_file):
        return None
    import json
    manifest = os.path.join(os.path.dirname(os.path.abspath(cfg.train_file)), "manifest.json")
    try:
        with open(manifest, encoding="utf-8") as f:
            if json.load(f).get("task") == cfg.task:
                return None
    except (OSError, ValueError, AttributeError):
        pass
    return (f"warning: data.task={cfg.task} with your own data.train_file={cfg.train_file}: the gold evaluation "
            f"scores {cfg.task}'s own prompts (and a preset's tokenizer learns {cfg.task}'s text), not your "
            "file's; leave data.task out unless the file holds that task's data")


def data_new_tokens(tokenizer, texts: list[str]) -> int | None:
    """Room for the data's completions: 1.25 x the 95th percentile of their token counts, plus one (EOS);
    None without any."""
    texts = [t for t in texts if t]
    if not texts:
        return None
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return max(1, int(1.25 * lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]) + 1)


def sized_sampling(cfg, tokenizer, records: list, context: int):
    """`cfg` with eval.max_new_tokens (and rollout.max_new_tokens) 0 replaced by data_new_tokens of the
    records' completions (chosen ones for pairs), else 24; at most half the model's context. Prints the
    value once. The run's config.yaml keeps 0 (the rule, not its result)."""
    import dataclasses
    from .. import dist
    keys = [k for k in ("eval", "rollout") if getattr(getattr(cfg, k, None), "max_new_tokens", None) == 0]
    if not keys:
        return cfg
    texts = [getattr(r, "completion", None) or getattr(r, "chosen", None) or "" for r in records]
    n = data_new_tokens(tokenizer, texts)
    source = f"from the {sum(bool(t) for t in texts)} completions of the training data" if n else \
        "the default: the data has no completions to size it on"
    n = min(n or 24, context // 2)
    if dist.is_main():
        print(f"{' and '.join(k + '.max_new_tokens' for k in keys)}: {n} ({source})", flush=True)
    changes = {k: dataclasses.replace(getattr(cfg, k), max_new_tokens=n) for k in keys}
    return dataclasses.replace(cfg, **changes)


def prompt_format(tokenizer, named: dict[str, list], cfg) -> tuple[dict[str, list], str]:
    """Every record list of `named` in the model's prompt template (data/templates.py), and the template.
    A model without one (a preset, a base model) takes the format of the first non-empty list, and its
    tokenizer keeps it (saved in final/). Records written in another format are rendered in the model's,
    with one warning naming both, with an example."""
    from .. import dist
    from ..data.templates import data_format, format_records, preview, set_template, template_of

    model = cfg.model.path or f"the {cfg.model.preset} preset"
    source = cfg.data.train_file or cfg.data.dataset or cfg.data.dir or (f"task {cfg.data.task}" if cfg.data.task else "")
    name = template_of(tokenizer)
    if name is None:
        name = data_format(next((r for r in named.values() if r), []))
        set_template(tokenizer, name)
    out, warned = {}, False
    for label, records in named.items():
        out[label], example = format_records(records, name, tokenizer)
        written = data_format(records)
        if example and not warned and (written != name or name == "tokenizer" and written == "plain") \
                and dist.is_main():
            print(f"warning: {label} ({source}) are in the {written} prompt format, but {model} uses the {name} "
                  f"format; this run renders them in {name} (one format per run): {preview(example[0])} -> "
                  f"{preview(example[1])}", file=sys.stderr, flush=True)
            warned = True
    return out, name


def begin_run(cfg, kind: str) -> RunStart | dict:
    """Open the run directory (locked; its config must match this one, see rundir.RunDir); a finished
    run returns its summary (reused, never overwritten). Otherwise prepare the resume, seed everything,
    pick the device, and load the task and the records of `kind`."""
    from .. import dist
    from ..errors import TinyRLHFError
    from ..tasks.generate import task_of_data
    from .engine import resolve_device, set_seed
    from .rundir import RunDir, RunView

    # Under torchrun rank 0 alone opens (locks, checks, writes) the run directory and tells the others
    # whether to go on; a single process runs exactly as before.
    dist.init(cfg.train.device)
    run, done, refused = None, None, None
    if dist.is_main():
        try:
            run = RunDir(cfg.out_dir, cfg, resume=cfg.train.resume, force_new=cfg.train.force_new)
            done = run.finished_summary()
        except TinyRLHFError as e:
            refused = e
    verdict, done = dist.broadcast_object((refused is not None, done))
    if refused is not None:
        raise refused
    if verdict:
        raise dist.PeerFailed(f"rank {dist.rank()}: rank 0 refused the run (its error line says why)")
    if run is None:
        run = RunView(cfg.out_dir, cfg)
    if done is not None:
        if dist.is_main():
            print(f"{cfg.out_dir} is already finished with this config; reusing it")
        return done
    run.prepare_resume()
    if dist.is_main() and (note := own_data_with_task(cfg.data)):
        print(note, file=sys.stderr, flush=True)
    t_start = time.time()
    set_seed(cfg.seed)
    device = resolve_device(cfg.train)
    train, evals, data_metrics = load_records(cfg.data, kind)
    # the task as its data was written (task overrides in the manifest): evaluation prompts of the same kind
    # (never generates data: with data.train_file and no data.dir, the default dir is read only if it exists)
    data_dir = cfg.data.dir or os.path.join("runs", "data", f"{cfg.data.task}-seed{cfg.data.seed}")
    task = task_of_data(data_dir, cfg.data.task) if cfg.data.task else None
    return RunStart(run, device, task, train, evals, data_metrics, t_start)
