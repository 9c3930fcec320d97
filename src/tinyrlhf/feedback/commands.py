"""`tinyrlhf label` (the labelling / arena session) and `tinyrlhf feedback export` (labels -> training files).

    tinyrlhf label fb.db --task positive_review --model sft=runs/pr/sft --model ppo=runs/pr/ppo \\
        --mode pair --labellers alice,bob,carol --port 8100
    tinyrlhf label fb.db --outputs outputs.jsonl --mode ranking --labellers alice,bob
    tinyrlhf label fb.db --mode arena --model runs/pr/sft --model runs/pr/ppo --labellers alice
    tinyrlhf label fb.db --labellers alice,bob          # serve the queue already in fb.db (e.g. the loop's)
    tinyrlhf feedback export fb.db --out runs/human-labels
"""
from __future__ import annotations

import math
import os
import socket

from ..errors import TinyRLHFError
from .checks import ARENA, check_items, check_names, valid_text
from .sources import MODES


def add_parsers(sub) -> None:
    p = sub.add_parser("label", help="labelling and arena web app: people rank model outputs; labels go to SQLite")
    p.add_argument("db", help="the SQLite feedback database (created if missing)")
    p.add_argument("--mode", choices=MODES, default="pair",
                   help="pair (A/B/tie/both bad), ranking (K-way), binary (thumbs up/down) or arena (the person's "
                   "own prompt, two anonymous models)")
    p.add_argument("--labellers", default="", help="comma-separated names; each gets its own link (token)")
    p.add_argument("--prompts", default="", help="a prompts file (any format `eval --prompts` reads)")
    p.add_argument("--columns", default="", help="your prompts file's own field names, e.g. prompt=question")
    p.add_argument("--task", default="", help="a built-in task: its held-out prompts")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="a run or model directory to sample outputs from (repeat for several)")
    p.add_argument("--outputs", default="", help='JSONL of {"prompt", "outputs": [{"model", "text"}, ...]} to label '
                   "instead of sampling")
    p.add_argument("--n-prompts", type=int, default=50, help="prompts taken from --task / --prompts (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per sampled output (default 48)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts, sampling and shown orders")
    p.add_argument("--batch", default="session", help="name the new items' batch (default 'session')")
    p.add_argument("--double-share", type=float, default=None,
                   help="share of new items labelled by two people, for agreement (default 0.2, kept in the DB)")
    p.add_argument("--lease", type=float, default=600.0,
                   help="seconds an unanswered item stays in one labeller's queue only (default 600)")
    p.add_argument("--arena-prompts", type=int, default=200,
                   help="arena: prompts each labeller may ask in this database (default 200; 0 = no limit)")
    p.add_argument("--arena-votes", type=int, default=200,
                   help="arena: votes each labeller may cast in this database (default 200; 0 = no limit)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: other machines on the LAN)")
    p.add_argument("--port", type=int, default=8100, help="TCP port (default 8100)")
    p.set_defaults(func=cmd_label, overrides=[])
    p = sub.add_parser("feedback", help="human feedback: export the labels of a `tinyrlhf label` database")
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    e = fsub.add_parser("export", help="write pairs/rankings/binary JSONL for the trainers and a summary")
    e.add_argument("db", help="the SQLite feedback database")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--batch", default=None, help="only this batch's labels (default: all)")
    e.set_defaults(func=cmd_export, overrides=[])


def _no_overrides(args, what: str):
    if args.overrides:
        raise TinyRLHFError(f"{what} takes no key=value settings, got {' '.join(args.overrides)}")


def _items(args, models) -> list[dict] | None:
    """The items this invocation adds (None: it adds none, it serves what the DB holds)."""
    from ..data.formats import parse_columns
    from .sources import file_prompts, read_outputs_file, sampled_items, task_prompts

    if args.outputs:
        return read_outputs_file(args.outputs, args.mode)
    if not (args.task or args.prompts):
        return None
    if args.mode == "arena":
        raise TinyRLHFError("--mode arena takes the person's own prompts: drop --task / --prompts")
    prompts = (task_prompts(args.task, args.n_prompts, args.seed) if args.task
               else file_prompts(args.prompts, args.n_prompts, parse_columns(args.columns, "--columns")))
    return sampled_items(models, prompts, args.mode, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, seed=args.seed)


def _check_label_args(args):
    """Every option on its own, before anything is loaded, bound or created."""
    if args.outputs and (args.task or args.prompts or args.model):
        raise TinyRLHFError("--outputs already holds the outputs: drop --task / --prompts / --model")
    if args.task and args.prompts:
        raise TinyRLHFError("give --task or --prompts, not both")
    if (args.task or args.prompts) and not args.model:
        raise TinyRLHFError("--task / --prompts need at least one --model to sample outputs from")
    if args.model and not (args.task or args.prompts) and args.mode != "arena":
        raise TinyRLHFError("--model needs --task or --prompts (what to ask it), or --mode arena")
    if args.mode == "arena" and len(args.model) < 2:
        raise TinyRLHFError("--mode arena needs two or more --model")
    if args.double_share is not None and not 0.0 <= args.double_share <= 1.0:
        raise TinyRLHFError(f"--double-share must be in [0, 1], got {args.double_share}")
    for key in ("n_prompts", "max_new_tokens"):
        if getattr(args, key) < 1:
            raise TinyRLHFError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise TinyRLHFError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if not (math.isfinite(args.lease) and args.lease > 0):
        raise TinyRLHFError(f"--lease must be a finite number of seconds > 0, got {args.lease}")
    for key in ("arena_prompts", "arena_votes"):
        if getattr(args, key) < 0:
            raise TinyRLHFError(f"--{key.replace('_', '-')} must be >= 0 (0 = no limit), got {getattr(args, key)}")
    if not 0 <= args.port <= 65535:
        raise TinyRLHFError(f"--port must be in 0..65535, got {args.port}")
    if not args.batch or not valid_text(args.batch) or len(args.batch) > 200:
        raise TinyRLHFError(f"--batch {args.batch!r}: expected a name of 1 to 200 characters")
    if args.batch == ARENA:
        raise TinyRLHFError(f"--batch {ARENA!r} is where arena votes go: name the queued items' batch otherwise")


def _check_context(models, args) -> None:
    """Each model must leave room for --max-new-tokens after a prompt token."""
    for name, m in models.models.items():
        if args.max_new_tokens >= m.context:
            raise TinyRLHFError(f"--max-new-tokens {args.max_new_tokens}: model '{name}' attends over {m.context} "
                                "positions, prompt included; ask for fewer")


def prepare_label(args):
    """Everything `tinyrlhf label` does before serving: check the arguments, the database (read-only), the
    labellers, bind the port, load the models, sample and check the items; only then create or open the
    database, queue the items and print the links. A refused command leaves no database and queues nothing.
    Returns (app, listening socket, store)."""
    from ..serve.server import bind
    from .app import create_label_app
    from .dbfile import check_file, existing_labellers
    from .sources import Models
    from .store import Store

    _no_overrides(args, "label")
    _check_label_args(args)
    names = [n.strip() for n in args.labellers.split(",") if n.strip()]
    check_names(names)
    check_file(args.db, must_exist=False, allow_empty=True)  # another program's file: refused, untouched
    if not names and not existing_labellers(args.db):
        raise TinyRLHFError("no labellers: pass --labellers alice,bob")
    sock = bind(args.host, args.port)  # a taken port is an error before any model loads
    try:
        models = Models(args.model) if args.model else None
        if models is not None:
            _check_context(models, args)
        items = _items(args, models)
        if items is not None:
            check_items(items)
        store = Store(args.db, lease_s=args.lease)  # the first write to the database
    except BaseException:
        sock.close()
        raise
    try:  # a failure from here on (a full disk) closes what is open; the CLI prints one line
        if args.double_share is not None:
            store.set_meta("double_share", repr(args.double_share))
        if items is not None:
            held = store.count_items(args.batch)
            if held:  # a restarted session must not queue its items twice
                print(f"batch '{args.batch}' already holds {held} items: not adding more (name a new one with --batch)")
            else:
                store.add_items(items, args.batch)
                print(f"queued {len(items)} {args.mode} items in batch '{args.batch}'")
        tokens = store.add_labellers(names) if names else store.add_labellers(store.labellers())
        host, port = sock.getsockname()[:2]
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        print(f"{store.count_items()} items, {store.count_labels()} labels so far in {args.db}")
        print("labeller links (send each person their own):")
        for name, token in tokens.items():
            print(f"  {name:12s} http://{shown}:{port}/?token={token}")
        print(f"admin token: {store.admin_token()}  (GET /api/admin/progress with 'Authorization: Bearer TOKEN'; "
              "never in a URL)")
        print(f"export: tinyrlhf feedback export {args.db} --out DIR", flush=True)
        app = create_label_app(store, args.mode, models=models, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed,
                               arena_prompts=args.arena_prompts or None, arena_votes=args.arena_votes or None)
    except BaseException:
        sock.close()
        store.close()
        raise
    return app, sock, store


def cmd_label(args) -> int:
    import uvicorn

    app, sock, store = prepare_label(args)
    try:  # uvicorn stops gracefully on Ctrl-C / SIGTERM, then re-raises the signal: our stop, not an error
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped: {store.count_labels()} labels in {args.db}; the same command starts the session again "
              "(same links, no items queued twice)", flush=True)
        store.close()
    return 0


def cmd_export(args) -> int:
    from .export import export_labels, format_summary

    _no_overrides(args, "feedback export")
    summary = export_labels(args.db, args.out, args.batch)
    print(format_summary(summary))
    print(f"written: {os.path.join(args.out, '')}{{pairs,rankings,binary}}.jsonl, summary.json")
    return 0
