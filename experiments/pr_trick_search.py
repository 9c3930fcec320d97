"""Try to game positive_review's gold with answers built from word banks, kind by kind, and print the best
answer of each kind (its mean gold on 200 eval prompts, seed 0, and its text on the first prompt). The best
of each degenerate kind went into tasks/baselines.py's battery; "bank review" is a prompt-reading rule.

    .venv/bin/python experiments/pr_trick_search.py              # the kinds
    .venv/bin/python experiments/pr_trick_search.py --constant   # the best prompt-independent review

--constant: a greedy search that adds, one at a time, the bank sentence that raises the mean gold most on
2,000 train prompts (seed 0), until none does (tasks/baselines.py's "best constant found").

Every answer may read the asked aspect and fill in its words (sorted: "beautiful", "clean", ... for the looks),
as the reviewer's examples did; a kind's parameters (how many words, which separator, frame or noun) are
tried exhaustively.
"""
from __future__ import annotations

import argparse
import itertools
import statistics

from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.positive_review import (ASPECT_SENTENCES, ASPECT_WORDS, GENERAL, GENERAL_SENTENCES,
                                            NEUTRAL_SENTENCES, parse_review_prompt)

NOUNS = ("design", "colour", "build", "price", "delivery", "setup", "money", "value")
FRAMES = ("It is {w}.", "So {w}.", "Very {w}.", "Really {w}.", "The {p} is {w}.", "I love it, so {w}.")


def _product(p: str) -> str:
    return parse_review_prompt(p)[1]


def _aspect(p: str) -> str:
    return parse_review_prompt(p)[2]


def _words(p: str, k: int, general: int = 0) -> list[str]:
    """The first `general` GENERAL words (sorted), then the asked aspect's (sorted): k in all."""
    return (sorted(GENERAL)[:general] + sorted(ASPECT_WORDS[_aspect(p)]))[:k]


def _kinds():
    """(kind, answer) for every parameter setting of every kind."""
    for k, g in itertools.product(range(1, 7), range(3)):
        for sep, art in itertools.product((" ", ", ", " and "), ("", "A ", "It is a ", "The {p} is ")):
            yield "adjective list", lambda p, k=k, g=g, sep=sep, art=art: " " + (
                art.format(p=_product(p)) + sep.join(_words(p, k, g))
                + ("" if art.startswith("The") else " " + _product(p))).strip().capitalize() + "."
        yield "praise-word + product sentences", lambda p, k=k, g=g: "".join(
            f" {w.capitalize()} {_product(p)}." for w in _words(p, k, g))
        yield "one-word sentences", lambda p, k=k, g=g: "".join(f" {w.capitalize()}." for w in _words(p, k, g))
        yield "adjective + other noun sentences", lambda p, k=k, g=g: "".join(
            f" {w.capitalize()} {n}." for w, n in zip(_words(p, k, g), NOUNS))
        for frame in FRAMES:
            yield "frames", lambda p, k=k, g=g, frame=frame: "".join(
                " " + frame.format(w=w, p=_product(p)).capitalize() for w in _words(p, k, g))
        yield "two adjectives a sentence", lambda p, k=k, g=g: "".join(
            f" A {a}, {b} {_product(p)}." for a, b in zip(_words(p, 2 * k, g)[::2], _words(p, 2 * k, g)[1::2]))
        for r in range(2, 6):
            yield "product noun repeated", lambda p, k=k, r=r: " " + " ".join([_product(p)] * (r - 1)).capitalize() \
                + " " + " ".join(_words(p, k)) + " " + _product(p) + "."
    # bank sentences stacked: k general ones, then the asked aspect's first n
    for n, k in itertools.product(range(1, 6), range(5)):
        for general in (itertools.combinations(GENERAL_SENTENCES, k) if k <= 1 else [GENERAL_SENTENCES[:k]]):
            kind = f"bank sentences stacked ({n + k})" if n + k >= 4 else "bank review (a rule)"
            yield kind, lambda p, n=n, general=general: " " + " ".join(
                s.format(p=_product(p)) for s in list(general) + list(ASPECT_SENTENCES[_aspect(p)][:n]))
    for n in (1, 2, 3):
        yield "general bank praise, product repeated", lambda p, n=n: " " + " ".join(
            s.format(p=_product(p)) for s in [x for x in GENERAL_SENTENCES if "{p}" in x][:n + 1])


def search_kinds(task, prompts) -> dict[str, tuple[float, str]]:
    best: dict[str, tuple[float, str]] = {}
    for kind, answer in _kinds():
        value = statistics.fmean(task.gold_reward(p, answer(p)) for p in prompts)
        if value > best.get(kind, (-1.0, ""))[0]:
            best[kind] = (value, answer(prompts[0]))
    return best


def search_constant(task, prompts) -> list[tuple[float, str]]:
    bank = list(GENERAL_SENTENCES + NEUTRAL_SENTENCES + sum(ASPECT_SENTENCES.values(), ()))

    def mean(sentences):
        text = " " + " ".join(sentences)
        return statistics.fmean(task.gold_reward(p, text.format(p=_product(p), c=parse_review_prompt(p)[0]))
                                for p in prompts)
    chosen, best, steps = [], 0.0, []
    while True:
        value, sentence = max((mean(chosen + [s]), s) for s in bank if s not in chosen)
        if value <= best:
            return steps
        chosen.append(sentence)
        best = value
        steps.append((best, " " + " ".join(chosen)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--constant", action="store_true", help="the greedy search for the best fixed review")
    args = ap.parse_args()
    task = get_task("positive_review")
    if args.constant:
        for value, text in search_constant(task, task.prompts("train", 2000, seed=0)):
            print(f"{value:.4f}{text}")
        return
    best = search_kinds(task, task.prompts("eval", 200, seed=0))
    for kind, (value, text) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        print(f"{value:.3f} {kind}:{text}")


if __name__ == "__main__":
    main()
