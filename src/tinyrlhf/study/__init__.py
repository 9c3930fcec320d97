"""Orchestration: studies that train, evaluate and compare many runs. Nothing below imports it.

    spec.py          what a comparison is: METHODS, SWEEP, CompareSpec, parse_spec, runs_of, paths, json files
    compare.py       `tinyrlhf compare`: plan the stages, run what is missing, write the report
    stages.py        one stage for one seed (data, sft, pairs, reward, a method, baselines, eval)
    policy_data.py   preference labels on a policy's own samples (the "pairs" stage, `tinyrlhf data --from-model`)
    baselines.py     the bars a method must beat: heuristic, sharpened SFT, best-of-n
    run_eval.py      a finished run scored on validation and held-out prompts
    report.py  report_md.py  report_plots.py      results.csv/json, report.md and its plots
    loop_spec.py  loop.py  loop_labels.py  loop_report.py  loop_cli.py      `tinyrlhf loop`, iterated RLHF

spec.py and loop_spec.py hold what the others share and import none of them, so no file here imports one that
imports it back. May import: every package below (feedback/, serve/, eval/, train/, ...); only cli imports
study/ (tests/test_layout.py checks it).
"""
