"""The `tinyrlhf` command. Each subcommand parses a config (YAML + dotted overrides) and calls one loop.

    tinyrlhf data family_tree --out runs/data/ft seed=1
    tinyrlhf sft --config configs/family_tree/sft.yaml train.max_steps=300
    tinyrlhf reward --config configs/family_tree/reward.yaml model.path=runs/ft/sft/final
    tinyrlhf dpo --config configs/family_tree/dpo.yaml loss=ipo
    tinyrlhf kto --config configs/family_tree/kto.yaml
    tinyrlhf ppo --config configs/family_tree/ppo.yaml reward=runs/family_tree/reward
    tinyrlhf rloo|grpo|reinforce-pp|online-dpo|rs --config configs/family_tree/X.yaml reward=gold
    tinyrlhf loop --task positive_review --rounds 3 --labels simulated --seeds 2 --out runs/loop
    tinyrlhf eval runs/ft/dpo --prompts my_prompts.jsonl --reward runs/ft/reward
    tinyrlhf export runs/ft/dpo --out exported/dpo --merge
    tinyrlhf serve runs/family_tree/sft runs/family_tree/dpo --port 8000 --quantize int8
    tinyrlhf label fb.db --task family_tree --model runs/family_tree/sft --labellers alice,bob
    tinyrlhf feedback export fb.db --out runs/human-labels

User errors (bad data, config, paths) print one line `error: ...` and exit 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import TinyRLHFError

HEADLINE = ("before/gold/mean", "before/gold/greedy", "gold/mean", "gold/greedy", "gold/max", "kl/ref", "kl/coef",
            "eval/loss", "eval/accuracy", "eval/margin", "episodes_per_s",
            "eval/accuracy_labels", "eval/accuracy_gold", "tokens_per_s", "train_seconds", "peak_rss_mib",
            "steps", "finished")


def _print_summary(summary: dict, out_dir: str):
    from . import dist
    if not dist.is_main():  # under torchrun rank 0 speaks for the run
        return
    print(f"run: {out_dir}")
    for k in HEADLINE:
        if k in summary:
            v = summary[k]
            print(f"  {k:24s} {v:.4f}" if isinstance(v, float) else f"  {k:24s} {v}")


# what `tinyrlhf data` writes: an --out that already holds any of these is refused without --force
DATA_FILES = ("manifest.json", "sft.jsonl", "pairs.jsonl", "rankings.jsonl", "binary.jsonl",
              "eval_prompts.jsonl", "eval_pairs.jsonl")


def _check_data_out(out: str, force: bool, base: str = ""):
    """Refuse an --out that is a file, or that already holds task data (finished runs read those files and
    their reuse and reference caches depend on them) unless --force."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise TinyRLHFError(f"--out '{out}' is a file, not a directory")
    if base and os.path.isdir(base) and os.path.realpath(out) == os.path.realpath(base):
        raise TinyRLHFError(f"--out '{out}' is the --base directory; write the new data elsewhere")
    held = [n for n in DATA_FILES if os.path.exists(os.path.join(out, n))] if os.path.isdir(out) else []
    if held and not force:
        raise TinyRLHFError(f"--out '{out}' already holds data ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                            "runs that used it depend on those files: choose another --out, or add --force "
                            "to overwrite them")


def _cmd_data(args) -> int:
    from .config import parse_overrides
    from .tasks.generate import write_task_data

    kwargs = dict(parse_overrides(args.overrides))
    seed = kwargs.pop("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise TinyRLHFError(f"seed must be an integer in [0, 2^32), got {seed!r}")
    _check_data_out(args.out, args.force, args.base if args.from_model else "")
    if args.from_model:
        from .loading import check_model_dir
        from .study.policy_data import write_policy_data
        if not args.base:
            raise TinyRLHFError("--from-model needs --base (the task data directory whose annotators and prompts to use)")
        valid = {"n_prompts": int, "k": int, "temperature": float, "max_new_tokens": int}
        for key, value in kwargs.items():
            if key not in valid or not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TinyRLHFError(f"with --from-model: bad option {key}={value!r} (valid: {', '.join(valid)})")
            if not value > 0:
                raise TinyRLHFError(f"with --from-model: {key} must be > 0, got {value!r}")
        check_model_dir(args.from_model, "--from-model")
        manifest = os.path.join(args.base, "manifest.json")
        base_task = args.task
        if os.path.isfile(manifest):  # a missing one is reported by write_policy_data
            try:
                with open(manifest, encoding="utf-8") as f:
                    base_task = json.load(f).get("task", args.task)
            except (ValueError, AttributeError):
                raise TinyRLHFError(f"--base '{args.base}': manifest.json is not a JSON object") from None
        if base_task != args.task:
            raise TinyRLHFError(f"--base '{args.base}' holds {base_task} data, not {args.task}")
        counts = write_policy_data(args.from_model, args.base, args.out, seed=seed,
                                   **{k: valid[k](v) for k, v in kwargs.items()})
        print(json.dumps(counts, indent=2))
        return 0
    counts = write_task_data(args.task, args.out, seed=seed, **kwargs)
    print(json.dumps(counts, indent=2))
    return 0


def _cmd_train(args) -> int:
    import importlib

    from . import config as C

    # command -> (config class, module, loop function)
    table = {"sft": (C.SFTConfig, "sft", "run_sft"), "reward": (C.RewardConfig, "reward", "run_reward"),
             "dpo": (C.PreferenceConfig, "preference", "run_preference"), "kto": (C.KTOConfig, "kto", "run_kto"),
             "ppo": (C.PPOConfig, "ppo", "run_ppo"), "rloo": (C.GroupConfig, "group", "run_group"),
             "grpo": (C.GroupConfig, "group", "run_group"), "reinforce-pp": (C.GroupConfig, "group", "run_group"),
             "online-dpo": (C.OnlineDPOConfig, "online_dpo", "run_online_dpo"), "rs": (C.RSConfig, "rs", "run_rs")}
    cls, module, fn = table[args.command]
    overrides = list(args.overrides)
    if args.command in ("rloo", "grpo", "reinforce-pp"):  # the command names the algorithm (and its defaults)
        for key, value in C.parse_overrides(overrides):
            if key == "algo" and value != args.command:
                raise TinyRLHFError(f"'tinyrlhf {args.command}' cannot run algo={value}; use 'tinyrlhf {value}'")
        overrides.insert(0, f"algo={args.command}")
    if args.force_new:
        overrides.append("train.force_new=true")
    cfg = C.load_config(cls, args.config, overrides)
    for line in C.loss_warnings(cfg):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if args.print_config:
        source = f"{args.config} + overrides" if args.config else "built-in defaults + overrides"
        print(f"# tinyrlhf {args.command}: the resolved config ({source}); "
              "save it and run with --config FILE")
        print(C.render_yaml(cfg))
        return 0
    summary = getattr(importlib.import_module(f".train.{module}", __package__), fn)(cfg)
    from . import dist
    _print_summary(summary, cfg.out_dir)
    if not summary.get("finished", False) and dist.is_main():
        print(f"stopped early at step {summary.get('steps')}: run the same command again to continue")
    return 0


def _cmd_eval(args) -> int:
    import dataclasses

    from .config import coerce, parse_overrides
    from .eval.evaluate import EvalSettings, evaluate_model, format_report, write_result

    fields = {f.name: f.type for f in dataclasses.fields(EvalSettings)}
    kwargs = {}
    for key, value in parse_overrides(args.overrides):
        if key not in fields:
            raise TinyRLHFError(f"unknown eval setting '{key}' (valid: {', '.join(fields)})")
        kwargs[key] = coerce(value, {"int": int, "float": float, "str": str}[fields[key]], key)
    if (args.split or args.subset) and not args.dataset:
        raise TinyRLHFError("--split and --subset choose a part of --dataset; give --dataset")
    if not args.task and not args.prompts and not args.dataset:
        raise TinyRLHFError("eval needs --task (a built-in task) or --prompts FILE or --dataset NAME_OR_DIR "
                            "(your own prompts)")
    if sum(map(bool, (args.task, args.prompts, args.dataset))) > 1:
        raise TinyRLHFError("give one of --task, --prompts and --dataset")
    if args.out and os.path.isdir(args.out):  # before the evaluation, not after it
        raise TinyRLHFError(f"--out {args.out}: is a directory; give the result file's name "
                            f"(e.g. {os.path.join(args.out, 'eval.json')})")
    from .data.formats import parse_columns
    columns = parse_columns(args.columns, "--columns")
    judge = args.judge
    if judge == "chat":
        from .eval.judges import ChatJudge
        judge = ChatJudge(args.judge_url, model=args.judge_model)
    prompts = args.prompts or ""
    if args.dataset:
        from .data.hub import open_dataset
        prompts = open_dataset(args.dataset, split=args.split, subset=args.subset, what="--dataset",
                               default_split="test", split_key="--split")
    result = evaluate_model(args.model, args.task or None, prompts_file=prompts,
                            prompts_format=args.format, prompts_columns=columns, reward=args.reward or "",
                            reference=args.reference,
                            judge=judge, settings=EvalSettings(**kwargs))
    name = args.task or ("dataset-" + os.path.basename(args.dataset.rstrip("/")) if args.dataset else
                         "file-" + os.path.basename(args.prompts).split(".")[0])
    out = args.out or os.path.join(args.model if os.path.isfile(os.path.join(args.model, "config.yaml"))
                                   else ".", f"eval-{name}.json")
    write_result(result, out)
    print(format_report(result))
    print(f"written: {out}")
    return 0


def _cmd_export(args) -> int:
    from .export import export_model

    if args.overrides:
        raise TinyRLHFError(f"export takes no key=value settings, got {' '.join(args.overrides)}")
    done = export_model(args.run, args.out, merge=args.merge, force=args.force)
    what = {"merged": "a plain model (LoRA adapters merged)", "plain": "a plain model",
            "adapter": "a LoRA adapter (needs its base; --merge writes a standalone model)"}[done["kind"]]
    print(f"exported {what}{' with its reward head' if done['reward_model'] else ''} to {done['out']}")
    print(f"  files: {', '.join(done['files'])}")
    return 0


def _cmd_compare(args) -> int:
    from .study.compare import parse_spec, run_compare
    from .study.report import format_table

    spec = parse_spec(args.task, args.methods, args.seeds, args.out or f"runs/compare/{args.task}", args.budget,
                      args.config_dir, args.eval_prompts, args.overrides, args.offline_data, labels=args.labels,
                      val_prompts=args.val_prompts, rm_data=args.rm_data, rm_logp=args.rm_logp, trials=args.trials,
                      grid=args.grid, best_of=args.best_of, nproc=args.nproc, temperatures=args.temperatures,
                      tune=args.tune)
    budgets = ()
    if args.label_sweep:
        from .study.label_sweep import parse_budgets
        budgets = parse_budgets(args.label_sweep)
    print(f"compare {spec.task}: methods {', '.join(spec.methods)} x {spec.seeds} seed(s), budget {spec.budget} "
          f"prompts and {spec.n_labels} labels per method"
          + (f", {spec.trials} trials each" if spec.trials > 1 else "") + f" -> {spec.out}", flush=True)
    out = run_compare(spec, log=lambda line: print(line, flush=True))
    print(format_table(spec, out["results"]))
    print(f"report: {out['report']}")
    if budgets:
        from .study.label_sweep import run_label_sweep
        result = run_label_sweep(spec, budgets, log=lambda line: print(line, flush=True))
        print("\n".join(result["verdict"]))
        print(f"label sweep: {os.path.join(spec.out, 'label_sweep.md')}")
    return 0


def _add_loop_parser(sub):
    """`tinyrlhf loop`: iterated RLHF with simulated or human labels (tinyrlhf/study/loop_cli.py)."""
    from .study.loop_cli import add_parser
    add_parser(sub)


def _cmd_serve(args) -> int:
    import os

    from .serve.config import EngineConfig, HTTPConfig, ServeConfig, parse_model_specs
    from .serve.server import serve

    if args.overrides:
        raise TinyRLHFError(f"serve takes no key=value overrides, got {' '.join(args.overrides)} (name a model "
                            "with --name NAME=PATH)")
    engine = EngineConfig(max_batch=args.max_batch, queue_size=args.queue_size, timeout_s=args.timeout,
                          quantize=args.quantize, threads=args.threads)
    http = HTTPConfig(max_body_bytes=args.max_body_bytes, cors_origins=tuple(args.cors_origin),
                      api_key=args.api_key or os.environ.get("TINYRLHF_API_KEY") or None)
    cfg = ServeConfig(models=parse_model_specs(args.models + args.name), host=args.host, port=args.port,
                      engine=engine, http=http, no_auth=args.no_auth)
    return serve(cfg)


def _add_feedback_parsers(sub):
    """`tinyrlhf label` and `tinyrlhf feedback export` (human feedback: tinyrlhf/feedback/commands.py)."""
    from .feedback.commands import add_parsers
    add_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyrlhf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="write a built-in task's SFT, pair, ranking and binary JSONL files")
    p.add_argument("task", help="family_tree or positive_review")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--from-model", default="", help="pairs and binary labels on THIS model's samples (e.g. the SFT "
                   "model's final/), judged by the annotators of --base; options n_prompts= k= temperature=")
    p.add_argument("--base", default="", help="with --from-model: the task data directory to take prompts and annotators from")
    p.add_argument("--force", action="store_true",
                   help="overwrite the data files already in --out (runs trained on them no longer match them)")
    p.add_argument("overrides", nargs="*", help="seed=N and task options key=value")
    p.set_defaults(func=_cmd_data)
    p = sub.add_parser("eval", help="score a model or run on a task's held-out prompts or your own prompts file "
                       "(gold or reward-model score with CI, KL, win rate...)")
    p.add_argument("model", help="a run directory (its final/ is used), a Hugging Face model directory or an "
                   "unmerged LoRA final/")
    p.add_argument("--task", default="", help="a built-in task: family_tree or positive_review (gold reward known)")
    p.add_argument("--prompts", default="", help="your own prompts: any data file (project JSONL, hh-rlhf, TL;DR, "
                   "stack-exchange, {\"prompt\": ...} JSONL, CSV, chat messages...); no gold reward then")
    p.add_argument("--dataset", default="", help="your own prompts from a dataset (pip install 'tinyrlhf[datasets]'): "
                   "a Hugging Face hub name, a save_to_disk directory or a directory of parquet/json files")
    p.add_argument("--split", default="", help="the --dataset split (default: test, else the only one)")
    p.add_argument("--subset", default="", help="the --dataset configuration (subset) name")
    p.add_argument("--format", default="auto", help="format of --prompts or --dataset rows (default: detected)")
    p.add_argument("--columns", default="", help="your --prompts file's (or --dataset's) own field names, e.g. "
                   "prompt=question,completion=answer (as data.columns.* in training)")
    p.add_argument("--reward", default="", help="a reward run directory: also report its score")
    p.add_argument("--reference", default=None,
                   help="reference model or run for KL and win rate (default: the run's starting model; '' = none)")
    p.add_argument("--judge", choices=("gold", "reward", "chat"), default=None,
                   help="who judges the win rate (default: gold on a task, else reward with --reward)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint (or $TINYRLHF_JUDGE_URL)")
    p.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to the chat endpoint")
    p.add_argument("--out", default=None, help="result JSON (default: RUN/eval-TASK.json or RUN/eval-file-NAME.json)")
    p.add_argument("overrides", nargs="*", help="n_prompts=, max_new_tokens=, temperature=, seed=, data_seed=")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("export", help="write a run's model as a Hugging Face directory with a model card")
    p.add_argument("run", help="a run directory, its final/ or a model directory")
    p.add_argument("--out", required=True, help="output directory (refused if not empty, unless --force)")
    p.add_argument("--merge", action="store_true", help="merge LoRA adapters into the weights (a plain model)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("compare", help="run and evaluate several methods at an equal budget over seeds; write a report")
    p.add_argument("--task", required=True, help="family_tree or positive_review")
    p.add_argument("--methods", default="sft,ppo,dpo,ipo,kto",
                   help="comma-separated: sft, ppo, rloo, grpo, dr-grpo, dapo, reinforce-pp, online-dpo, rs, dpo, "
                   "ipo, cdpo, hinge, simpo, orpo, kto")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (each with its own data, SFT and RM)")
    p.add_argument("--budget", type=int, default=4800, help="training prompts (pairs, examples or rollout prompts) per method")
    p.add_argument("--out", default=None, help="output directory (default runs/compare/TASK)")
    p.add_argument("--config-dir", default="", help="base configs STAGE.yaml (default configs/TASK)")
    p.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts per evaluation")
    p.add_argument("--offline-data", choices=("policy", "task"), default="policy",
                   help="offline methods learn from SFT samples judged by the annotators (policy) or the task's pairs")
    p.add_argument("--labels", type=int, default=0, help="preference labels per method: the reward model's and the "
                   "offline methods' (default: --budget)")
    p.add_argument("--rm-data", choices=("policy", "task"), default="policy",
                   help="the reward model learns from the labelled SFT samples (policy, the offline methods' labels) "
                   "or the task's scripted pairs")
    p.add_argument("--rm-logp", action="store_true", help="add the SFT trunk's log-prob term to the reward model")
    p.add_argument("--trials", type=int, default=1, help="settings of each method's key hyper-parameter, picked on "
                   "validation prompts (1 = the config's value)")
    p.add_argument("--grid", action="append", default=[], help="METHOD.key=v1,v2,... instead of the default grid "
                   "(several keys of one method are zipped, e.g. dpo.beta=... and dpo.train.lr=...)")
    p.add_argument("--tune", default="key,lr,epochs", help="what --trials varies, a subset of key (the method's "
                   "regulariser), lr (config's /3 to x3), epochs (offline methods' passes over their labels)")
    p.add_argument("--label-sweep", default="", metavar="L1,L2,...", help="after the comparison, label-budget "
                   "curves: the reward model + PPO and DPO again at each label count (e.g. 640,2560,10240), "
                   "OUT/label_sweep.md")
    p.add_argument("--val-prompts", type=int, default=200, help="validation prompts per seed (choose trials, baselines)")
    p.add_argument("--best-of", default="4,16", help="best-of-n baselines against the reward model ('' = none)")
    p.add_argument("--temperatures", default="1,0.7,0.5,0.3,0", help="every policy also sampled at these "
                   "temperatures (0 = greedy) and compared at its best one on validation ('' = T=1 only)")
    p.add_argument("--nproc", type=int, default=1, help="processes per training stage: > 1 launches each stage "
                   "with torchrun (DDP; one GPU each on a CUDA machine, gloo on CPU)")
    p.add_argument("overrides", nargs="*", help="STAGE.key=value for one stage (sft.train.max_steps=600, "
                   "ppo.kl.target=2) or key=value for every training stage (train.threads=1)")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("serve", help="OpenAI-compatible server (batched CPU inference, streaming) and a chat page; "
                       "reward models on /v1/rewards")
    p.add_argument("models", nargs="*", help="run directories (final/ is served; a reward run is scored on "
                   "/v1/rewards) or model directories")
    p.add_argument("--name", action="append", default=[], metavar="NAME=PATH", help="serve PATH under NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--quantize", choices=("none", "int8", "bf16"), default="none",
                   help="weights: none (fp32), int8 (torch.ao dynamic) or bf16")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (default 32)")
    p.add_argument("--queue-size", type=int, default=64, help="requests that may wait; more get 429 (default 64)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queue included (default 300)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: one per core)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes "
                   "(default: $TINYRLHF_API_KEY; none)")
    p.add_argument("--no-auth", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (repeatable; default: no other origin)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; larger ones get "
                   "413 (default 1048576)")
    p.set_defaults(func=_cmd_serve, overrides=[])
    _add_feedback_parsers(sub)
    for name, what in (("sft", "supervised fine-tuning"), ("reward", "reward model (Bradley-Terry)"),
                       ("dpo", "offline preference optimisation: loss=dpo|ipo|cdpo|hinge|simpo|orpo"),
                       ("kto", "KTO on unpaired good/bad feedback"),
                       ("ppo", "PPO from an SFT model and a reward source (reward model, gold, callable)"),
                       ("rloo", "RLOO: k samples per prompt, leave-one-out baseline"),
                       ("grpo", "GRPO: k samples per prompt, group-normalised advantages"),
                       ("reinforce-pp", "REINFORCE++: token-level KL in the reward, batch-normalised advantages"),
                       ("online-dpo", "online DPO: fresh pairs from the policy ranked by a reward source"),
                       ("rs", "rejection sampling: SFT on the best of k samples per prompt, round after round")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--config", help="YAML config file (see configs/)")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config as YAML, each key with its documentation, and exit")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")
        p.add_argument("--force-new", action="store_true",
                       help="start anew even if out_dir holds a run: move it aside to OUT_DIR.old-N first")
        p.set_defaults(func=_cmd_train)
    _add_loop_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides (key=value) may come before or after options: collect every leftover key=value
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load drown our own output
    from .train.guard import RunInterrupted
    on_term = _raise_on_sigterm()
    try:
        return args.func(args)
    except TinyRLHFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:  # a training loop stopped at a step boundary and wrote its checkpoint
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except RuntimeError as e:  # under torchrun: a collective failed because another rank died
        from . import dist
        if not dist.peer_lost(e):
            raise
        print(f"error: rank {dist.rank()}: a collective failed ({str(e).splitlines()[0][:160]}): another process "
              "of this torchrun job stopped or was killed; run the same command again to continue from the last "
              "checkpoint", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # outside a training step (setup, evaluation, final save)
        from .train.rundir import interrupted_note
        print(f"interrupted: {interrupted_note()}", file=sys.stderr)
        return 143 if str(e) == "SIGTERM" else 130
    finally:
        on_term()
        from . import dist
        dist.finish()


def _raise_on_sigterm():
    """SIGTERM (e.g. `kill`, a job scheduler) stops like Ctrl-C: training loops checkpoint first. Returns
    the function that restores the previous handler."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    raise SystemExit(main())
