"""What people touch: `tinyrlhf label` (the labelling and arena web app) and `tinyrlhf feedback export`.

    store.py  checks.py        the SQLite store of items and append-only labels, and what it accepts
    app.py  static/            the FastAPI app and its one page
    sources.py                 prompts, sampled outputs and arena models to label
    export.py                  labels -> the trainers' files, with agreement and ratings
    commands.py                the two subcommands' options

May import: serve/ (model loading, binding) and everything below it. Never study/ or cli; the iterated loop
that consumes these labels is study/loop.py (tests/test_layout.py checks it).
"""
