"""Evaluating one model or a set of outputs; no orchestration (comparing methods lives in study/).

    evaluate.py  `tinyrlhf eval`: a model on a task's held-out prompts or your own prompts file
    judges.py    which of two completions is better (gold, a reward model, a chat model)
    metrics.py   pure functions: bootstrap intervals, ROUGE/BLEU, diversity, lengths
    ratings.py   Elo and Bradley-Terry ratings from pairwise judgments

May import: train/ (reward sources, precision, completion log-probs) and everything below it. Never serve/,
feedback/, study/ or cli (tests/test_layout.py checks it).
"""
