"""Degenerate policies (tasks/baselines.py) score clearly below what SFT imitates, and the reviewer's
exploits of the old gold rewards no longer pay.

The stand-in for "a decent SFT model" is the task's own demonstration distribution (CI cannot train a
real one). Measured on these 400 eval prompts (seed 0): family_tree demonstrations 0.984 (max 1.2), the
best degenerate policy ("parents, founders as grandparents, else None") 0.513; positive_review
demonstrations 0.365 (max 1.0), the best degenerate policy ("best constant found") 0.214. The margins
below are fixed: 0.3 on family_tree, 0.1 on positive_review.
"""
import math
import random
import statistics

import pytest

from tinyrlhf.tasks import get_task
from tinyrlhf.tasks.baselines import (baseline_policies, best_baseline, degenerate_policies, heuristic_rules,
                                      score_policies)
from tinyrlhf.tasks.family_tree import parse_prompt

MARGIN = {"family_tree": 0.3, "positive_review": 0.1, "summarize": 0.25}
N_PROMPTS = 400


@pytest.fixture(scope="module", params=["family_tree", "positive_review", "summarize"])
def scored(request):
    task = get_task(request.param)
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    return task, prompts, score_policies(task, prompts)


def _demo_mean(task, prompts) -> float:
    rng = random.Random(0)
    return statistics.fmean(task.gold_reward(p, task.demonstration(p, rng)) for p in prompts)


def test_every_degenerate_policy_is_clearly_below_the_demonstrations(scored):
    task, prompts, scores = scored
    demo = _demo_mean(task, prompts)
    tricks = degenerate_policies(task)
    assert len(tricks) >= 8 and len(scores) >= 12
    for name, value in ((n, scores[n]) for n in tricks):
        assert value <= demo - MARGIN[task.name], f"{name}: {value:.3f} vs demonstrations {demo:.3f}"
    # ... and the demonstrations are imperfect: room above them for RLHF
    assert demo < task.max_gold - 0.15


def test_best_baseline_is_the_strongest_policy_and_policies_are_pure(scored):
    task, prompts, scores = scored
    name, value = best_baseline(task, prompts)
    assert value == max(scores.values()) and scores[name] == value
    policies = baseline_policies(task)
    assert set(policies) == set(scores) == set(degenerate_policies(task)) | set(heuristic_rules(task))
    for policy in policies.values():  # a pure function of the prompt: the same answer every time
        assert [policy(p) for p in prompts[:20]] == [policy(p) for p in prompts[:20]]
    only = score_policies(task, prompts[:50], {"empty": lambda p: ""})
    assert only == {"empty": 0.0}


# ---------------------------------------------------------------- the reviewer's exploits, by name

def test_constant_none_earns_the_format_bonus_only_when_right():
    """" None." gets 1.2 where the true set is empty and 0 elsewhere, so its mean is exactly 1.2 x the share
    of empty answers (0.165 here -> 0.198). The old gold paid the 0.2 bonus on every prompt: 0.365-0.370."""
    task = get_task("family_tree")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    empty = sum(task.reference_answer(p) == " None." for p in prompts) / len(prompts)
    scores = score_policies(task, prompts, {"none": lambda p: " None."})
    assert scores["none"] == pytest.approx(1.2 * empty, abs=1e-12)
    assert scores["none"] < 0.25


def test_names_with_parents_heuristic_no_longer_pays():
    """Every name that has parents, minus the person asked about: it scored 0.46-0.49 under set F1 with
    an unconditional format bonus; under Jaccard with a gated bonus 0.224 on these prompts. On one
    question it is a hand-checkable J = 4/8 (see test_tasks.test_over_listing_costs_what_it_should)."""
    task = get_task("family_tree")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    policy = baseline_policies(task)["names with parents minus the person"]
    fam, person, _ = parse_prompt(prompts[0])
    assert set(policy(prompts[0])[1:-1].split(", ")) == {n for n in fam.parents if n != person}
    value = score_policies(task, prompts, {"h": policy})["h"]
    assert value < 0.25
    assert value < _demo_mean(task, prompts) - 0.7


def test_stuffing_sentence_scores_near_zero():
    """" It is great and good and lovely and easy and solid and quick and nice kettle." scored 0.97 (stop
    words diluted the old density penalty). Now, asked about the looks: one sentence with 7 praise words,
    the first two (great, good: general) count and 5 are stuffed ('lovely' among them, so the asked aspect
    is not praised). praise = 1 - exp(-2/1.5) = 0.736403, aspect 0.1, stuffing exp(-5/2) = 0.082085;
    every other factor is 1 (15 known words, no repeats, 7/15 < 0.5 praise share, product named, ends with
    '.'): gold = 0.736403 * 0.1 * 0.082085 = 0.0060447."""
    task = get_task("positive_review")
    text = " It is great and good and lovely and easy and solid and quick and nice kettle."
    expected = (1 - math.exp(-2 / 1.5)) * 0.1 * math.exp(-2.5)
    assert task.gold_reward("Review of the blue kettle (looks):", text) == pytest.approx(expected, abs=1e-9)
    policy = degenerate_policies(task)["adjectives joined by 'and'"]
    assert policy("Review of the blue kettle (looks):") == text


def test_a_fixed_review_cannot_reach_the_maximum():
    """The old task's best answer ignored the prompt: one fixed review with the product filled in scored
    0.97. Now the prompt asks for an aspect, so a fixed review is right on 1 prompt in 5: the best one the
    greedy search found scores 0.21, while reading the aspect (one template per aspect, a rule that solves
    the task) scores 0.95 -- the maximum is reachable, but only by answering the prompt."""
    from tinyrlhf.tasks.positive_review import ASPECT_SENTENCES, parse_review_prompt
    task = get_task("positive_review")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)

    def solver(p):
        _, product, aspect = parse_review_prompt(p)
        return f" Great {product}. " + " ".join(ASPECT_SENTENCES[aspect][:2]) + " I would recommend it."

    scores = score_policies(task, prompts)
    assert scores["the old fixed review"] < 0.1
    assert max(scores.values()) < 0.25
    assert score_policies(task, prompts, {"solver": solver})["solver"] > 0.9


def test_summarize_tricks_and_rules():
    """summarize, 400 eval prompts (seed 0): demonstrations 0.503 (max 1.0); the best trick lead-2 0.158 (a
    distractor opens half the posts); copying the post -0.31 (28-45 words against an 18-word budget, and its
    distractors); the keyword list -0.38 (no clause: fluency 0, and its distractor words); every entity in the
    vocabulary -1.6 (dozens of invented names). A rule that keeps the sentence naming who did it and the
    question scores 0.76, above the demonstrations: picking the right sentences is the task."""
    task = get_task("summarize")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    scores = score_policies(task, prompts)
    demo = _demo_mean(task, prompts)
    assert scores["copy the post"] < 0 and scores["keyword list"] < 0 and scores["every entity"] < -1
    assert max(scores[f"lead-{n}"] for n in (1, 2, 3)) < demo - 0.3
    assert max(scores[n] for n in heuristic_rules(task)) > demo + 0.1
