"""Degenerate policies (tasks/baselines.py) score clearly below what SFT imitates, and the reviewer's
exploits of the old gold rewards no longer pay.

The stand-in for "a decent SFT model" is the task's own demonstration distribution (CI cannot train a
real one). Measured on these 400 eval prompts (seed 0): family_tree demonstrations 0.984 (max 1.2), the
best degenerate policy ("parents, founders as grandparents, else None") 0.513; positive_review
demonstrations 0.330 (max 1.0), the best degenerate policy ("best constant found") 0.201. The margins
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
from tinyrlhf.tasks.positive_review import parse_review_prompt, review_features

MARGIN = {"family_tree": 0.3, "positive_review": 0.1, "summarize": 0.25}
N_PROMPTS = 400


def _compare_setting(name: str) -> dict:
    """The task settings `tinyrlhf compare` uses (configs/TASK/data.yaml), task keys only."""
    import os

    import yaml
    from tinyrlhf.tasks import task_config_keys
    path = os.path.join(os.path.dirname(__file__), "..", "configs", name, "data.yaml")
    settings = yaml.safe_load(open(path)) if os.path.isfile(path) else {}
    return {k: v for k, v in (settings or {}).items() if k in task_config_keys(name)}


# each task at its defaults, and family_tree as compare uses it (2 children, no siblings/cousins questions)
@pytest.fixture(scope="module", params=["family_tree", "family_tree@compare", "positive_review", "summarize"])
def scored(request):
    name, _, how = request.param.partition("@")
    task = get_task(name, **(_compare_setting(name) if how else {}))
    assert not how or task.config.max_children == 2 and "siblings" not in task.config.relations
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
    is not praised). praise = 1 - exp(-2/1.5) = 0.736403, aspect 0.1, stuffing exp(-5/2) = 0.082085 times
    exp(-((7/16 - 0.4) / 0.1)^2) = exp(-0.140625) for a praise share of 7/16; of its 16 word triples only
    (start, it, is) is a bank's: fluency (1/16)^2. Every other factor is 1 (16 known words, no repeats, one
    sentence, product named, ends with '.'): gold = 0.736403 * 0.1 * 0.082085 * 0.868815 / 256 = 2.0515e-5."""
    task = get_task("positive_review")
    text = " It is great and good and lovely and easy and solid and quick and nice kettle."
    expected = (1 - math.exp(-2 / 1.5)) * 0.1 * math.exp(-2.5) * math.exp(-0.140625) / 256
    assert task.gold_reward("Review of the blue kettle (looks):", text) == pytest.approx(expected, abs=1e-12)
    policy = degenerate_policies(task)["adjectives joined by 'and'"]
    assert policy("Review of the blue kettle (looks):") == text


def test_a_fixed_review_cannot_reach_the_maximum():
    """The old task's best answer ignored the prompt: one fixed review with the product filled in scored
    0.97. Now the prompt asks for an aspect, so a fixed review is right on 1 prompt in 5: the best one the
    greedy search found scores 0.20, while reading the aspect (the rule "one template per aspect") scores
    0.92 -- the maximum is reachable, but only by answering the prompt."""
    task = get_task("positive_review")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    tricks = score_policies(task, prompts, degenerate_policies(task))
    rules = score_policies(task, prompts, heuristic_rules(task))
    assert tricks["the old fixed review"] < 0.1
    assert max(tricks.values()) < 0.25
    assert max(rules, key=rules.get) == "one template per aspect" and rules["one template per aspect"] > 0.9
    assert min(rules.values()) < 0.5      # the weaker rules are weaker


def test_the_reviewers_three_exploits_no_longer_pay():
    """The issue's answers, asked about a pan's looks (the battery fills in the asked aspect's words):
    " Pan pan pan beautiful clean pan." scored 1 - e^(-4/3) = 0.736 (the product's words were not counted):
    now the 3rd and 4th "pan" repeat 2 of its 6 content words (r = 1/3) and none of its 6 word triples is a
    bank's, so fluency is 0 and gold 0.
    " Great pan. Beautiful pan. Clean pan. ..." (7 sentences, 0.94 before): 6 sentences copy the frame
    "P pan" (r = 6/7), 2 of 14 word triples are a bank's ("Great pan." is one: fluency 1/49), 7 sentences
    (exp(-(4/1.5)^2)), half the words praise (exp(-1)), d = 7: gold =
    (1 - e^(-14/3)) e^(-24/7) e^(-1) e^(-64/9) / 49 = 2.1e-7.
    " A beautiful, clean pan. A elegant, lovely pan. A pretty, stylish pan." (0.96 before): 2 of 3 sentences
    copy the frame "a P P pan" (r = 2/3), no word triple is a bank's: gold 0."""
    task = get_task("positive_review")
    prompt = "Review of the red pan (looks):"
    policies = degenerate_policies(task)
    one, two, three = (policies[n](prompt) for n in ("product noun repeated", "praise-word + product sentences",
                                                      "two adjectives a sentence"))
    assert one == " Pan pan pan beautiful clean pan."
    assert two == " Great pan. Beautiful pan. Clean pan. Elegant pan. Lovely pan. Pretty pan. Stylish pan."
    assert three == " A beautiful, clean pan. A elegant, lovely pan. A pretty, stylish pan."
    f = {k: review_features("pan", t, "looks") for k, t in (("one", one), ("two", two), ("three", three))}
    assert (f["one"]["repeat_share"], f["one"]["known_triples"]) == (pytest.approx(1 / 3, abs=1e-12), 0)
    assert (f["two"]["repeat_share"], f["two"]["known_triples"]) == (pytest.approx(6 / 7, abs=1e-12),
                                                                      pytest.approx(1 / 7, abs=1e-12))
    assert (f["three"]["repeat_share"], f["three"]["known_triples"]) == (pytest.approx(2 / 3, abs=1e-12), 0)
    assert task.gold_reward(prompt, one) == 0.0 and task.gold_reward(prompt, three) == 0.0
    expected = (1 - math.exp(-14 / 3)) * math.exp(-24 / 7 - 1 - 64 / 9) / 49
    assert task.gold_reward(prompt, two) == pytest.approx(expected, rel=1e-9)


def test_a_hand_written_good_review_beats_the_demonstrations():
    """Three fluent sentences with three distinct relevant praise words and nothing else wrong score
    1 - e^-2 = 0.865 whatever the aspect (experiments/pr_measure.py writes one per aspect), far above the
    demonstrations' 0.330 -- and above every trick, which is what the gold is for."""
    task = get_task("positive_review")
    prompts = task.prompts("eval", N_PROMPTS, seed=0)
    good = {"looks": " Great {p}. It looks elegant in the room. I love it.",
            "build": " Great {p}. It feels smooth and well made. I love it.",
            "ease": " Great {p}. Very easy to use. I love it.",
            "price": " Great {p}. Worth every penny. I love it.",
            "delivery": " Great {p}. It arrived early. I love it."}
    for p in prompts:
        _, product, aspect = parse_review_prompt(p)
        assert task.gold_reward(p, good[aspect].format(p=product)) == pytest.approx(1 - math.exp(-2), abs=1e-12)
    assert 1 - math.exp(-2) > _demo_mean(task, prompts) + 0.5


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
