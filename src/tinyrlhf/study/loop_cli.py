"""The `tinyrlhf loop` subcommand: its options, and the call into study/loop.py."""
from __future__ import annotations


def run(args) -> int:
    from .loop import parse_loop, run_loop
    spec = parse_loop(args.task, args.rounds, args.labels, args.method, args.seeds, args.out, args.overrides,
                      config=args.config, config_dir=args.config_dir, static_rm=args.static_rm, db=args.db)
    print(f"loop {spec.task}: {spec.cond}, {spec.rounds} round(s) x {spec.seeds} seed(s), {spec.labels} labels, "
          f"{spec.loop.labels_per_round} per round -> {spec.out}", flush=True)
    report = run_loop(spec, log=lambda line: print(line, flush=True))
    print(f"report: {report['files'][0]}")
    return 0


def add_parser(sub):
    p = sub.add_parser("loop", help="iterated RLHF: sample, label (simulated or people), reward model, policy, "
                       "evaluate, round after round")
    p.add_argument("--task", required=True, help="family_tree or positive_review")
    p.add_argument("--rounds", type=int, required=True, help="rounds (a larger number continues a finished loop)")
    p.add_argument("--labels", required=True, help="simulated (the task's annotators) or human (tinyrlhf label)")
    p.add_argument("--method", default="ppo", help="policy training: ppo (default), dpo, rloo, grpo, online-dpo")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (each with its own data and SFT model)")
    p.add_argument("--out", required=True, help="output directory (shared by both conditions)")
    p.add_argument("--static-rm", action="store_true", help="baseline: one reward model trained once on all "
                   "rounds' labels (SFT samples); same as loop.refresh_rm=false")
    p.add_argument("--config", default="", help="loop settings YAML (default configs/TASK/loop.yaml)")
    p.add_argument("--config-dir", default="", help="stage configs STAGE.yaml (default configs/TASK)")
    p.add_argument("--db", default="", help="with --labels human: the feedback database (default OUT/feedback.db)")
    p.add_argument("overrides", nargs="*", help="loop.key=value, STAGE.key=value (sft.train.max_steps=300, "
                   "ppo.kl.coef=0.02) or key=value for every training stage (train.threads=1)")
    p.set_defaults(func=run)
