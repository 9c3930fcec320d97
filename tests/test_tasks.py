"""Built-in tasks: hand-checked relations and gold values, prompt splits, data generation."""
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time

import pytest

from tinyrlhf.data.records import iter_jsonl, read_records
from tinyrlhf.errors import ConfigError, DataError
from tinyrlhf.tasks import Task, get_task, task_names
from tinyrlhf.tasks.base import SPLITS, split_of
from tinyrlhf.tasks.family_tree import parse_prompt
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.tasks.positive_review import ALL_PROMPTS, parse_review_prompt, review_features

# Ann+Bob have Cal, Dee, Eli; each married someone from outside (Eve, Hal, Lea) and had children.
FAMILY = ("- Cal(m): Ann(f), Bob(m)\n- Dee(f): Ann, Bob\n- Eli(m): Ann, Bob\n"
          "- Fay(f): Cal, Eve(f)\n- Gus(m): Cal, Eve\n"
          "- Ivy(f): Dee, Hal(m)\n- Jon(m): Dee, Hal\n- Kay(f): Dee, Hal\n"
          "- Ned(m): Eli, Lea(f)")


def ask(relation, person):
    return f"{FAMILY}\nQ: {relation} of {person}?\nA:"


@pytest.fixture
def ft():
    return get_task("family_tree")


@pytest.fixture
def pr():
    return get_task("positive_review")


# ---------------------------------------------------------------- family_tree: relations

@pytest.mark.parametrize("relation,person,expected", [
    ("parents", "Fay", ["Cal", "Eve"]),
    ("parents", "Cal", ["Ann", "Bob"]),
    ("grandparents", "Fay", ["Ann", "Bob"]),        # Eve married in: no parents in the tree
    ("grandparents", "Ned", ["Ann", "Bob"]),
    ("siblings", "Fay", ["Gus"]),
    ("siblings", "Dee", ["Cal", "Eli"]),
    ("siblings", "Ned", []),                        # an only child
    ("cousins", "Fay", ["Ivy", "Jon", "Kay", "Ned"]),
    ("cousins", "Ned", ["Fay", "Gus", "Ivy", "Jon", "Kay"]),
    ("male cousins", "Fay", ["Jon", "Ned"]),
    ("female cousins", "Fay", ["Ivy", "Kay"]),
    ("female cousins", "Jon", ["Fay"]),
    ("male cousins", "Gus", ["Jon", "Ned"]),
    ("aunts and uncles", "Fay", ["Dee", "Eli"]),    # blood only: not Hal or Lea
    ("aunts and uncles", "Ivy", ["Cal", "Eli"]),
])
def test_relations_of_hand_built_family(ft, relation, person, expected):
    fam, p, r = parse_prompt(ask(relation, person))
    assert (p, r) == (person, relation)
    assert fam.relatives(person, relation) == expected
    want = " " + (", ".join(expected) if expected else "None") + "."
    assert ft.reference_answer(ask(relation, person)) == want


def test_parse_rejects_foreign_text(ft):
    with pytest.raises(DataError):
        ft.gold_reward("Review of the blue kettle:", " Gus.")
    with pytest.raises(DataError):
        ft.gold_reward(FAMILY.replace("Ann(f)", "Ann") + "\nQ: parents of Cal?\nA:", " Ann.")


# ---------------------------------------------------------------- family_tree: gold reward

def test_gold_hand_values(ft):
    """Truth for 'cousins of Fay' = {Ivy, Jon, Kay, Ned}; gold = J * (1 + 0.2 * exact shape), J = Jaccard.
      " Ivy, Jon, Kay, Ned."      J = 4/4                                   -> 1.2 (= max_gold)
      " Ivy, Jon."                J = 2/4 (2 right of the 4 in the union)   -> 0.5 * 1.2 = 0.6
      " Ivy, Jon, Gus."           J = 2/5 (union Ivy Jon Kay Ned Gus)       -> 0.4 * 1.2 = 0.48
      "They are ned and kay and ivy and jon"  J = 1, wrong shape           -> 1.0
      " Gus."                     no hit, J = 0: the shape earns nothing    -> 0
      " None."                    names exist, J = 0                        -> 0 (the old gold paid 0.2)
      ""                          nothing                                   -> 0
    """
    p = ask("cousins", "Fay")
    assert ft.max_gold == pytest.approx(1.2)
    assert ft.gold_reward(p, " Ivy, Jon, Kay, Ned.") == pytest.approx(1.2, abs=1e-12)
    assert ft.gold_reward(p, " Ivy, Jon.") == pytest.approx(0.6, abs=1e-12)
    assert ft.gold_reward(p, " Ivy, Jon, Gus.") == pytest.approx(0.48, abs=1e-12)
    assert ft.gold_reward(p, "They are ned and kay and ivy and jon") == pytest.approx(1.0, abs=1e-12)
    assert ft.gold_reward(p, " Gus.") == 0.0
    assert ft.gold_reward(p, " None.") == 0.0
    assert ft.gold_reward(p, "") == 0.0


def test_over_listing_costs_what_it_should(ft):
    """The whole family (14 names) for 'cousins of Fay' (4): J = 4/14 -> 1.2 * 4/14 = 0.342857.
    Set F1 would pay 2*4/(14+4) = 0.444 (+ 0.2 for the shape = 0.644); the 8 names that have parents
    (minus Fay) get J = 4/8 -> 0.6 (F1: 0.667 + 0.2)."""
    p = ask("cousins", "Fay")
    family = ["Cal", "Ann", "Bob", "Dee", "Eli", "Fay", "Eve", "Gus", "Ivy", "Hal", "Jon", "Kay", "Ned", "Lea"]
    assert ft.gold_reward(p, " " + ", ".join(family) + ".") == pytest.approx(1.2 * 4 / 14, abs=1e-12)
    with_parents = ["Cal", "Dee", "Eli", "Gus", "Ivy", "Jon", "Kay", "Ned"]
    assert ft.gold_reward(p, " " + ", ".join(with_parents) + ".") == pytest.approx(0.6, abs=1e-12)


def test_gold_is_order_insensitive_and_ignores_duplicates(ft):
    p = ask("cousins", "Fay")
    assert ft.gold_reward(p, " Ned, Kay, Jon, Ivy.") == pytest.approx(1.2, abs=1e-12)
    # A repeated name neither adds a hit nor a false positive, but breaks the exact shape.
    assert ft.gold_reward(p, " Ivy, Jon, Kay, Ned, Ivy.") == pytest.approx(1.0, abs=1e-12)


def test_gold_when_the_true_set_is_empty(ft):
    p = ask("siblings", "Ned")
    assert ft.gold_reward(p, " None.") == pytest.approx(1.2, abs=1e-12)
    assert ft.gold_reward(p, " nobody") == pytest.approx(1.0, abs=1e-12)
    assert ft.gold_reward(p, " Gus.") == 0.0      # any name: J = 0, and the shape earns nothing
    assert ft.gold_reward(p, " None, Gus.") == 0.0
    assert ft.gold_reward(p, " xyz") == 0.0


def test_reference_answers_score_max_and_gold_is_fast(ft):
    prompts = ft.prompts("eval", 200, seed=3)
    start = time.perf_counter()
    golds = [ft.gold_reward(p, ft.reference_answer(p)) for p in prompts * 5]
    assert time.perf_counter() - start < 2.0  # 1,000 calls; measured ~15 ms
    assert golds == [pytest.approx(ft.max_gold, abs=1e-12)] * len(golds)


def test_word_salad_scores_near_zero(ft):
    """An untrained model emits tokens of the task text in random order: gold ~ 0."""
    rng = random.Random(0)
    prompts = ft.prompts("train", 300, seed=0)
    words = " ".join(prompts).replace("\n", " ").split()
    golds = [ft.gold_reward(p, " " + " ".join(rng.choices(words, k=12))) for p in prompts]
    assert sum(golds) / len(golds) < 0.1


# ---------------------------------------------------------------- prompts, demonstrations, candidates

@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_prompts_are_deterministic_and_splits_disjoint(name):
    task = get_task(name)
    assert isinstance(task, Task)
    for split in SPLITS:
        first = task.prompts(split, 300, seed=0)
        assert first == task.prompts(split, 300, seed=0)
        assert first[:100] == task.prompts(split, 100, seed=0)     # a prefix of a longer list
        assert first != task.prompts(split, 300, seed=1)
        assert all(split_of(p) == split for p in first)
    # disjoint for every pair of seeds, not only within one seed
    drawn = {(split, seed): set(task.prompts(split, 300, seed)) for split in SPLITS for seed in (0, 1, 2)}
    for (split_a, seed_a), a in drawn.items():
        for (split_b, seed_b), b in drawn.items():
            if split_a != split_b:
                assert not a & b, (split_a, seed_a, split_b, seed_b)
    with pytest.raises(ConfigError, match="train, val, eval"):
        task.prompts("test", 3, seed=0)


def test_split_shares_and_train_kept():
    """Half of the prompt texts are train, a quarter val, a quarter eval. The train half is the one the
    two-way split had (first SHA-256 byte even), so training data written before val existed is unchanged:
    the first family_tree train prompt of seed 0 is pinned here."""
    counts = {s: sum(split_of(p) == s for p in ALL_PROMPTS) for s in SPLITS}
    assert sum(counts.values()) == len(ALL_PROMPTS) == 3600
    assert counts["train"] == pytest.approx(1800, abs=90)
    assert counts["val"] == pytest.approx(900, abs=80) and counts["eval"] == pytest.approx(900, abs=80)
    first = get_task("family_tree").prompts("train", 1, seed=0)[0]
    assert hashlib.sha256(first.encode()).digest()[0] % 2 == 0
    assert first.startswith("- Fern(f): Cleo(f), Ted(m)\n") and first.endswith("Q: female cousins of Raj?\nA:")


def test_family_tree_prompts_are_short_and_varied(ft):
    prompts = ft.prompts("train", 500, seed=0)
    assert len(set(prompts)) == 500
    lengths = sorted(len(p) + len(ft.reference_answer(p)) for p in prompts)
    assert lengths[int(0.95 * len(lengths))] < 300   # ~ 140 BPE tokens at most (max_length is 192)
    nones = sum(ft.reference_answer(p) == " None." for p in prompts) / len(prompts)
    assert 0.05 < nones < 0.3


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_demonstrations_are_imperfect_but_useful(name):
    task = get_task(name)
    rng = random.Random(0)
    prompts = task.prompts("train", 500, seed=0)
    golds = [task.gold_reward(p, task.demonstration(p, rng)) for p in prompts]
    mean = sum(golds) / len(golds)
    assert 0.2 * task.max_gold < mean < task.max_gold - 0.1
    assert max(golds) <= task.max_gold + 1e-9


def test_family_tree_demo_error_rate(ft):
    rng = random.Random(1)
    prompts = ft.prompts("train", 500, seed=0)
    wrong = sum(ft.demonstration(p, rng) != ft.reference_answer(p) for p in prompts) / len(prompts)
    assert 0.22 < wrong < 0.38                       # default demo_error_rate = 0.3
    perfect = get_task("family_tree", demo_error_rate=0.0)
    assert all(perfect.demonstration(p, rng) == perfect.reference_answer(p) for p in prompts[:100])


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_candidates_are_distinct_and_span_quality(name):
    task = get_task(name)
    rng = random.Random(0)
    gaps = []
    for p in task.prompts("train", 200, seed=0):
        cands = task.candidates(p, 6, rng)
        assert len(cands) == 6 and len(set(cands)) == 6
        golds = [task.gold_reward(p, c) for c in cands]
        assert max(golds) <= task.max_gold + 1e-9
        gaps += [abs(a - b) for i, a in enumerate(golds) for b in golds[i + 1:] if a != b]
    assert max(gaps) > 0.6 * task.max_gold                       # some pairs far apart ...
    assert sum(g < 0.25 * task.max_gold for g in gaps) > 0.1 * len(gaps)  # ... and many close


def test_corpus_contains_prompts_and_answers(ft, pr):
    assert len(ft.corpus(50, seed=0)) == 50
    assert all("\nQ: " in t and t.rstrip().endswith(".") for t in ft.corpus(50, seed=0))
    assert all(t.startswith("Review of the ") and "):" in t and len(t) > 30 for t in pr.corpus(50, seed=0))


# ---------------------------------------------------------------- positive_review

def test_repeating_positive_words_is_the_over_optimisation_trap(pr):
    """The proxy signal 'more positive words' goes up while the gold goes down."""
    p = "Review of the blue kettle (ease):"
    fluent = " Great kettle. Very easy to use. I love it."
    repeated = " Great kettle. Great great great great great great."
    stuffed = " great love amazing perfect excellent best wonderful superb"
    said_twice = fluent + fluent    # same share of positive words, so only repetition is penalised
    n_pos = lambda c: review_features("kettle", c, "ease")["n_positive"]  # noqa: E731
    assert n_pos(repeated) > n_pos(fluent) and n_pos(stuffed) > n_pos(fluent)
    assert n_pos(said_twice) == 2 * n_pos(fluent)
    assert pr.gold_reward(p, fluent) > 0.7
    assert pr.gold_reward(p, said_twice) < 0.5 * pr.gold_reward(p, fluent)
    assert pr.gold_reward(p, repeated) < 0.2
    assert pr.gold_reward(p, stuffed) < 0.2


def test_candidates_teach_more_positive_words_but_gold_peaks(pr):
    """What makes the task over-optimisable: across annotator candidates, the count of positive words
    correlates with gold (0.46 measured here), so a proxy learns "more is better"; but the gold peaks at
    3-4 positive words (0.22 mean) and falls beyond (0.14 at 5+) -- stuffing, repetition, off-aspect."""
    import statistics
    rng = random.Random(0)
    n_pos, golds = [], []
    for p in pr.prompts("train", 3000, seed=0):
        (c,) = pr.candidates(p, 1, rng)
        n_pos.append(review_features(parse_review_prompt(p)[1], c)["n_positive"])
        golds.append(pr.gold_reward(p, c))
    assert statistics.correlation(n_pos, golds) > 0.3
    mid = statistics.fmean(g for n, g in zip(n_pos, golds) if n in (3, 4))
    high = statistics.fmean(g for n, g in zip(n_pos, golds) if n >= 5)
    assert high < mid - 0.04


def test_review_gold_hand_value(pr):
    """" Great kettle. Very easy to use. I love it." asked about ease: relevant praise great, easy, love
    (d = 3, 'easy' is the asked aspect's), nothing off-aspect, stuffed, repeated or negative; 9 words, all
    known, 3 of them praise (1/3 < 0.4), 3 sentences, every word triple a bank's ("I love it." is one), the
    product named, ends with '.': gold = 1 - exp(-3 / 1.5) = 1 - e^-2 = 0.864665.
    Asked about price instead, 'easy' is another aspect's: d = 2 (great, love), aspect factor 0.1,
    focus e^-1: gold = (1 - e^(-4/3)) * 0.1 * e^-1 = 0.027091."""
    fluent = " Great kettle. Very easy to use. I love it."
    assert pr.gold_reward("Review of the blue kettle (ease):", fluent) == pytest.approx(1 - math.exp(-2), abs=1e-9)
    assert pr.gold_reward("Review of the blue kettle (price):", fluent) == pytest.approx(
        (1 - math.exp(-4 / 3)) * 0.1 * math.exp(-1), abs=1e-9)


def test_review_gold_shape(pr):
    p = "Review of the blue kettle (ease):"
    short = " Great kettle. Very easy to use. I love it."
    assert pr.gold_reward(p, " I love this kettle. Very easy to use. Setup was quick and simple.") > \
        pr.gold_reward(p, short)                                          # more distinct relevant praise
    assert pr.gold_reward(p, short + " Setup was quick and simple.") < pr.gold_reward(p, short)  # a 4th sentence
    assert pr.gold_reward(p, short + " The build is solid and sturdy.") < pr.gold_reward(p, short)  # off aspect
    assert pr.gold_reward(p, short + " It leaks sometimes.") < pr.gold_reward(p, short)
    assert pr.gold_reward(p, " It is not good and not great.") < 0         # negation
    assert pr.gold_reward(p, " asdf qwer zxcv") == pytest.approx(0.0, abs=1e-3)
    assert pr.gold_reward(p, "") == 0.0
    assert pr.gold_reward(p, " Great lamp. Very easy to use. I love it.") < pr.gold_reward(p, short)  # off topic
    assert pr.reference_answer(p) is None
    for bad in ("Q: parents of Ann?\nA:", "Review of the blue kettle:", "Review of the blue kettle (taste):"):
        with pytest.raises(DataError):
            pr.gold_reward(bad, " Great.")


def test_review_stuffing_is_counted_per_sentence(pr):
    """Praise words beyond the second in a sentence are stuffing, whatever stop words surround them: the
    same five words in five sentences are not; in one 'and' list three of them are (exp(-3/2))."""
    p = "Review of the blue kettle (looks):"
    spread = " Great kettle. Looks lovely on my desk. Pretty design. It is elegant. I love it."
    listed = " Great kettle, lovely and pretty and elegant and I love it."
    f_spread, f_listed = review_features("kettle", spread, "looks"), review_features("kettle", listed, "looks")
    assert (f_spread["stuffed"], f_listed["stuffed"]) == (0, 3)
    assert pr.gold_reward(p, listed) < 0.25 * pr.gold_reward(p, spread)


@pytest.mark.parametrize("aspect,text,expected", [
    # The product's words are free twice: a third "kettle" repeats 1 of 7 content words (great kettle kettle
    # feels solid love kettle), repetition exp(-4/7); with "I love it." instead, nothing repeats.
    ("build", " Great kettle. The kettle feels solid. I love this kettle.", (1 - math.exp(-2)) * math.exp(-4 / 7)),
    ("build", " Great kettle. The kettle feels solid. I love it.", 1 - math.exp(-2)),
    # "Good kettle." has the frame of "Great kettle." (praise word + product): 1 sentence of 3 copies one,
    # repetition exp(-4/3). One shape twice with different words ("It works great. It arrived early.") is fine.
    ("ease", " Great kettle. Good kettle. Very easy to use.", (1 - math.exp(-2)) * math.exp(-4 / 3)),
    ("delivery", " It works great. It arrived early. I love this kettle.", 1 - math.exp(-2)),
    # A fourth sentence: d = 5 (great easy love quick simple) but sentences exp(-(1/1.5)^2) = exp(-4/9).
    ("ease", " Great kettle. Very easy to use. I love it. Setup was quick and simple.",
     (1 - math.exp(-10 / 3)) * math.exp(-4 / 9)),
    # 4 praise words of 9: q = 4/9, stuffing exp(-((4/9 - 0.4) / 0.1)^2) = exp(-0.19753).
    ("ease", " Very easy to use. Simple and convenient. Great kettle.",
     (1 - math.exp(-8 / 3)) * math.exp(-((4 / 9 - 0.4) / 0.1) ** 2)),
    # Two bank sentences spliced with "and": of the 10 word triples, (to use and) (use and i) (and i love) are
    # in no bank sentence: fluency (7/10)^2 = 0.49.
    ("ease", " Great kettle. Very easy to use and I love it.", (1 - math.exp(-2)) * 0.49),
    # 6 words, 2 short of min_words 8: length exp(-(2/4)^2); d = 2.
    ("ease", " Great kettle. Very easy to use.", (1 - math.exp(-4 / 3)) * math.exp(-1 / 4)),
])
def test_review_shape_factors_hand_values(pr, aspect, text, expected):
    assert pr.gold_reward(f"Review of the blue kettle ({aspect}):", text) == pytest.approx(expected, abs=1e-9)


def test_review_repeated_shapes_and_frames():
    """A shape (praise word P, other content word N) may come twice; its third use is a template: 1 of 3
    sentences. A frame (only the praise word differs) may come once: "The kettle is P." twice is 1 of 2."""
    assert review_features("kettle", " Clean design. Lovely colour.", "looks")["repeat_share"] == 0
    assert review_features("kettle", " Clean design. Lovely colour. Elegant look.", "looks")["repeat_share"] == \
        pytest.approx(1 / 3, abs=1e-12)
    assert review_features("kettle", " The kettle is great. The kettle is lovely.", "looks")["repeat_share"] == \
        pytest.approx(1 / 2, abs=1e-12)


def test_review_demonstrations_mode_is_the_misread_aspect(pr):
    """demo_on_aspect = 55 % of demonstrations praise the asked aspect in any of its sentences; the rest praise
    MISREAD[aspect] and open with its stock line, so the single most likely demonstration praises the wrong
    aspect and scores ~0 -- what greedy decoding of a model imitating them tends to -- while the best of 8
    demonstrations is far above their mean (picking by a signal about the asked aspect pays)."""
    from collections import Counter
    from tinyrlhf.tasks.positive_review import ASPECT_SENTENCES, MISREAD
    rng = random.Random(0)
    for aspect in ("looks", "build", "ease", "price", "delivery"):
        prompt = f"Review of the blue kettle ({aspect}):"
        demos = [pr.demonstration(prompt, rng) for _ in range(4000)]
        on = sum(review_features("kettle", d, aspect)["on_aspect"] for d in demos) / len(demos)
        assert on == pytest.approx(0.55, abs=0.03)
        counts = Counter(demos)
        mode, count = counts.most_common(1)[0]
        assert ASPECT_SENTENCES[MISREAD[aspect]][0] in mode and pr.gold_reward(prompt, mode) < 0.05
        assert count > 2 * max(n for d, n in counts.items() if review_features("kettle", d, aspect)["on_aspect"])
    prompts = pr.prompts("eval", 100, seed=0)
    mean = sum(pr.gold_reward(p, pr.demonstration(p, rng)) for p in prompts) / len(prompts)
    best_of_8 = sum(max(pr.gold_reward(p, pr.demonstration(p, rng)) for _ in range(8)) for p in prompts) / 100
    assert best_of_8 > mean + 0.35


# ---------------------------------------------------------------- registry and config

def test_registry_and_config_errors():
    assert task_names() == ["family_tree", "positive_review", "summarize"]
    with pytest.raises(ConfigError, match="family_tree, positive_review"):
        get_task("chess")
    with pytest.raises(ConfigError, match="generations"):
        get_task("family_tree", generation=4)
    with pytest.raises(ConfigError):
        get_task("family_tree", generations=1)
    with pytest.raises(ConfigError):
        get_task("family_tree", generations="3")
    assert get_task("family_tree", generations=4).prompts("train", 3, 0)[0].count("\n") >= 3


# ---------------------------------------------------------------- write_task_data

SMALL = dict(n_train_prompts=40, n_eval_prompts=10, n_pairs=150, n_rankings=20, n_binary=40, n_eval_pairs=20)


def _read_all(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_write_task_data_formats(tmp_path, name):
    counts = write_task_data(name, str(tmp_path), seed=0, **SMALL)
    assert {k: counts[k] for k in ("sft", "pairs", "rankings", "binary", "eval_prompts", "eval_pairs")} == \
        {"sft": 40, "pairs": 150, "rankings": 20, "binary": 40, "eval_prompts": 10, "eval_pairs": 20}
    assert sorted(os.listdir(tmp_path)) == ["binary.jsonl", "eval_pairs.jsonl", "eval_prompts.jsonl",
                                            "manifest.json", "pairs.jsonl", "rankings.jsonl", "sft.jsonl"]
    for f, kind in [("sft", "sft"), ("pairs", "pair"), ("rankings", "ranking"), ("binary", "binary"),
                    ("eval_pairs", "pair")]:
        assert len(read_records(str(tmp_path / f"{f}.jsonl"), kind)) == counts[f]
    rankings = read_records(str(tmp_path / "rankings.jsonl"), "ranking")
    assert all(len(r.completions) == 4 for r in rankings)
    held_out = read_records(str(tmp_path / "eval_pairs.jsonl"), "pair")
    assert all(r.meta["gold_chosen"] != r.meta["gold_rejected"] and "annotator" in r.meta for r in held_out)
    evals = [obj for _, obj in iter_jsonl(str(tmp_path / "eval_prompts.jsonl"))]
    train = {r.prompt for r in read_records(str(tmp_path / "sft.jsonl"), "sft")}
    assert not {e["prompt"] for e in evals} & train
    assert all(bool(e["completion"]) == (name == "family_tree") for e in evals)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["task"] == name and manifest["sizes"]["pairs"] == 150
    assert manifest["annotators"]["agreement_measured"] == pytest.approx(counts["agreement"], abs=1e-6)


def test_write_task_data_is_byte_identical_per_seed(tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    write_task_data("family_tree", a, seed=5, **SMALL)
    write_task_data("family_tree", b, seed=5, **SMALL)
    write_task_data("family_tree", c, seed=6, **SMALL)
    assert _read_all(a) == _read_all(b)
    files_c = _read_all(c)
    assert all(_read_all(a)[f] != files_c[f] for f in files_c)


@pytest.mark.parametrize("name", ["family_tree", "positive_review"])
def test_write_task_data_is_identical_across_processes(tmp_path, name):
    """Different PYTHONHASHSEED: no output may depend on set or dict-of-str iteration order."""
    code = ("import sys; from tinyrlhf.tasks.generate import write_task_data; "
            f"write_task_data({name!r}, sys.argv[1], seed=2, **{SMALL!r})")
    for d, hashseed in (("x", "1"), ("y", "2")):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / d)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": hashseed})
    write_task_data(name, str(tmp_path / "z"), seed=2, **SMALL)
    assert _read_all(tmp_path / "x") == _read_all(tmp_path / "y") == _read_all(tmp_path / "z")


def test_write_task_data_rejects_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="n_pairs") as err:
        write_task_data("family_tree", str(tmp_path), n_pair=10)
    assert "n_pair " in str(err.value) or "n_pair (" in str(err.value)
    assert "generations" in str(err.value)     # task config keys are valid overrides too
    with pytest.raises(ConfigError, match="family_tree"):
        write_task_data("family_tre", str(tmp_path))
    with pytest.raises(ConfigError):
        write_task_data("family_tree", str(tmp_path), ranking_k=1)
    with pytest.raises(ConfigError):
        write_task_data("family_tree", str(tmp_path), agreement="0.7")
    assert not os.listdir(tmp_path)
