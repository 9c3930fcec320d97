"""The summarize task: gold by hand, the posts and their splits, demonstrations and candidates, loading through
the summarize-from-feedback and TL;DR formats, and `tinyrlhf data summarize` end to end."""
import json
import math
import os
import random
import statistics
import subprocess
import sys

import pytest

from tinyrlhf.data.formats import load_preferences, load_prompts, load_sft
from tinyrlhf.data.public import tldr_prompt
from tinyrlhf.errors import ConfigError, DataError
from tinyrlhf.tasks import Task, get_task
from tinyrlhf.tasks.base import SPLITS, split_of
from tinyrlhf.tasks.generate import write_task_data
from tinyrlhf.tasks.summarize import LONGEST_REFERENCE, summary_features
from tinyrlhf.tasks.summarize_posts import parse_post, post_parts

POST = ("We both like chess. Last week my boyfriend Jim forgot my birthday.\n\n"
        "Now he did not say sorry. He has a dog named Ben. Should I move out?")
PROMPT = tldr_prompt(POST, "Need advice about my boyfriend", "relationships")
REF = " My boyfriend Jim forgot my birthday. He did not say sorry. Should I move out?"  # 15 words


@pytest.fixture(scope="module")
def task():
    return get_task("summarize")


# ---------------------------------------------------------------- gold by hand

def test_the_prompt_is_the_tldr_shape_and_parses(task):
    assert PROMPT == ("SUBREDDIT: r/relationships\nTITLE: Need advice about my boyfriend\nPOST: " + POST + "\nTL;DR:")
    assert isinstance(task, Task)
    post = parse_post(PROMPT)
    assert post["who"] == ("boyfriend", "jim") and post["pronouns"] == {"he": "he", "him": "him"}
    assert [s["kind"] for s in post["sentences"]] == ["distractor", "event", "complication", "distractor", "ask"]
    assert post["event"]["clause"] == "My boyfriend Jim forgot my birthday."      # the opener dropped
    assert post["complication"]["core"] == ("sorry",) and post["ask"]["core"] == ("move",)
    assert [d["core"] for d in post["distractors"]] == [("chess",), ("dog",)]     # a slot's filler marks it
    assert task.reference_answer(PROMPT) == REF


@pytest.mark.parametrize("completion,expected", [
    (REF, 1.0),                                                                       # the maximum, exactly
    (" My boyfriend Jim forgot my birthday. Should I move out?", 2 / 3),              # the complication missing
    (" He forgot my birthday. He did not say sorry. Should I move out?", 2 / 3),      # who did it missing
    (" Jim forgot my birthday. He did not say sorry. Should I move out?", 1.0),       # the name is a who
    (" My boyfriend Jim forgot my birthday. He has a dog named Ben. Should I move out?", 2 / 3 - 0.15),
    # an invented detail: the post has a dog named Ben, not a cat named Ada -> h = 2 (cat, ada): 0.6 * 0.75
    (" My boyfriend Jim forgot my birthday. He has a cat named Ada. Should I move out?", 2 / 3 - 0.45),
    # a wrong event: lost, keys are not in the post -> the event is not found and h = 2
    (" My boyfriend Jim lost my keys. He did not say sorry. Should I move out?", 2 / 3 - 0.45),
    # 20 words, 2 past the budget: 1 - (1 - exp(-(2/6)^2)); a fact said twice counts once
    (" My boyfriend Jim forgot my birthday. He did not say sorry. He did not say sorry. Should I move out?",
     math.exp(-1 / 9)),
    # a distractor and 19 words: 1 - 0.15 - (1 - exp(-(1/6)^2))
    (REF + " We both like chess.", 1 - 0.15 - (1 - math.exp(-1 / 36))),
    (" Jim, forgot, birthday, sorry, move.", 0.0),   # every core word, no clause: b = 0, fluency 0
    # one clause, 4 pairs, one known (<name>, forgot): b = 1/4, fluency (0.25 / 0.8)^2
    (" Jim forgot birthday sorry move.", (0.25 / 0.8) ** 2),
    (" Birthday my forgot boyfriend Jim.", 0.0),     # the event's words out of order
    (" My boyfriend Jim. Forgot my birthday.", 0.0),  # the event split across sentences
    ("", 0.0), ("   ", 0.0),
])
def test_gold_hand_values(task, completion, expected):
    assert task.gold_reward(PROMPT, completion) == pytest.approx(expected, abs=1e-12)


def test_features_and_penalties_by_hand(task):
    f = summary_features(parse_post(PROMPT), " My boyfriend Jim forgot my birthday. My cousin Ada thinks it is funny.")
    assert (f["n_words"], f["n_key"], f["key_found"], f["distractors"]) == (13, 3, 1, 0)
    assert f["invented"] == ["ada", "cousin", "funny"] and f["known_pairs"] == 1.0
    copy = task.gold_reward(PROMPT, " " + POST)  # every fact, 2 distractors, 28 words: 10 past the budget
    assert copy == pytest.approx(1 - 0.3 - (1 - math.exp(-(10 / 6) ** 2)), abs=1e-12) and copy < 0
    everyone = " Boyfriend, girlfriend, husband, wife, sister, brother, Ada, Amy, Ann, Ava, Bea, Abe, Alf, Ben."
    assert task.gold_reward(PROMPT, everyone) < -0.5


def test_config_is_checked(task):
    assert get_task("summarize", max_words=30).gold_reward(PROMPT, REF + " We both like chess.") == \
        pytest.approx(1 - 0.15, abs=1e-12)
    for bad in (dict(max_words=LONGEST_REFERENCE - 1), dict(fluent_share=0), dict(fluent_share=1.5),
                dict(length_scale=0), dict(halluc_weight=-1), dict(min_distractors=3, max_distractors=2),
                dict(max_distractors=4), dict(demo_long_prob=1.5)):
        with pytest.raises(ConfigError):
            get_task("summarize", **bad)
    with pytest.raises(ConfigError, match="valid: "):
        get_task("summarize", max_word=20)


def test_foreign_text_is_a_data_error(task):
    with pytest.raises(DataError, match="not a summarize prompt"):
        task.gold_reward("Review of the blue kettle (looks):", " Great.")
    with pytest.raises(DataError, match="no template wrote"):
        task.gold_reward(PROMPT.replace("We both like chess.", "I like jazz."), REF)
    with pytest.raises(DataError, match="one event"):
        task.gold_reward(tldr_prompt("We both like chess. Should I move out?", "Problems with my boyfriend",
                                     "relationships"), REF)


def test_longest_reference_fits_the_budget(task):
    """3 words of who ('My coworker Ezra') + the longest event, complication and question: 18 words, the
    default budget, so every reference reaches max_gold."""
    assert LONGEST_REFERENCE == 18 == task.config.max_words
    prompts = task.prompts("eval", 300, 0)
    assert all(task.gold_reward(p, task.reference_answer(p)) == 1.0 for p in prompts)
    assert max(len(task.reference_answer(p).split()) for p in prompts) == LONGEST_REFERENCE
    assert max(len(p.split()) for p in prompts) < 80  # with 'TL;DR:' and the header: ~60-75 BPE tokens


# ---------------------------------------------------------------- prompts and splits

def test_prompts_are_deterministic_disjoint_and_prefixes(task):
    seen = {}
    for seed in (0, 1):
        for split in SPLITS:
            ps = task.prompts(split, 60, seed)
            assert ps == task.prompts(split, 60, seed) and ps[:20] == task.prompts(split, 20, seed)
            assert all(split_of(p) == split for p in ps)
            for p in ps:
                assert seen.setdefault(p, split) == split
            assert len(set(ps)) == len(ps)  # a space of millions of posts: no repeats in a short list
    assert task.prompts("train", 20, 0) != task.prompts("train", 20, 1)
    with pytest.raises(ConfigError):
        task.prompts("test", 5, 0)


# ---------------------------------------------------------------- demonstrations and candidates

def test_demonstrations_are_imperfect_in_fixable_ways(task):
    prompts = task.prompts("train", 300, 0)
    rng = random.Random(0)
    demos = [(p, task.demonstration(p, rng)) for p in prompts]
    golds = [task.gold_reward(p, d) for p, d in demos]
    feats = [summary_features(parse_post(p), d) for p, d in demos]
    assert max(golds) == 1.0 and 0.3 < statistics.fmean(golds) < 0.7
    assert 0.2 < sum(g == 1.0 for g in golds) / len(golds) < 0.5           # a third are perfect
    assert sum(f["distractors"] > 0 for f in feats) > 0.4 * len(feats)     # too long / a distractor swapped in
    assert 0.05 < sum(bool(f["invented"]) for f in feats) / len(feats) < 0.3
    assert any(f["key_found"] < f["n_key"] and not f["distractors"] and not f["invented"] for f in feats)  # no who
    assert all(f["known_pairs"] == 1.0 for f in feats)  # written in the templates' words: fluent
    rng2 = random.Random(0)
    assert [task.demonstration(p, rng2) for p in prompts[:20]] == [d for _, d in demos[:20]]


def test_candidates_are_distinct_and_varied(task):
    rng = random.Random(1)
    golds = []
    for p in task.prompts("train", 100, 0):
        cands = task.candidates(p, 4, rng)
        assert len(set(cands)) == 4 and all(c.startswith(" ") for c in cands)
        golds += [task.gold_reward(p, c) for c in cands]
    assert max(golds) == 1.0 and min(golds) < -0.5 and statistics.pstdev(golds) > 0.4
    assert 0.08 < sum(g > 0.9 for g in golds) / len(golds) < 0.5       # the reference or as good


def test_corpus_covers_posts_and_summaries(task):
    corpus = task.corpus(30, 0)
    assert len(corpus) == 30 and corpus == task.corpus(30, 0)
    assert all(t.startswith("SUBREDDIT: r/") and "\nTL;DR: " in t for t in corpus)


# ---------------------------------------------------------------- the public formats' loaders

def _feedback_row(prompt: str, chosen: str, rejected: str, choice: int) -> dict:
    subreddit, title, post = post_parts(prompt)
    texts = [chosen, rejected] if choice == 0 else [rejected, chosen]
    return {"info": {"id": "t3_x", "post": post, "title": title, "subreddit": subreddit},
            "summaries": [{"text": t.strip(), "policy": "ref"} for t in texts], "choice": choice,
            "worker": "w1", "batch": "batch0", "split": "train"}


def test_summarize_from_feedback_rows_load_as_the_task_prompts(task, tmp_path):
    """Rows in the summarize-from-feedback JSONL shape, built from the task's posts, go through the same loaders
    as the OpenAI files: the prompts come back equal to the task's, and the gold scores their summaries."""
    prompts = task.prompts("eval", 6, 0)
    rng = random.Random(0)
    rows = [_feedback_row(p, task.reference_answer(p), task.demonstration(p, rng) + " We live near the park.", i % 2)
            for i, p in enumerate(prompts)]
    path = tmp_path / "comparisons.json"  # JSON lines in a .json file, as in the OpenAI batches
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_preferences(str(path))
    assert [r.prompt for r in pairs] == prompts
    assert all(r.meta["source"] == "summarize-from-feedback" for r in pairs)
    for r in pairs:
        assert r.chosen == task.reference_answer(r.prompt)
        assert task.gold_reward(r.prompt, r.chosen) == 1.0 > task.gold_reward(r.prompt, r.rejected)
    assert [r.prompt for r in load_sft(str(path))] == prompts                       # the chosen side
    assert [r.prompt for r in load_prompts(str(path))] == prompts


def test_tldr_rows_load_as_the_task_prompts(task, tmp_path):
    prompts = task.prompts("train", 5, 3)
    path = tmp_path / "tldr.jsonl"
    with open(path, "w") as f:
        for p in prompts:
            subreddit, title, post = post_parts(p)
            f.write(json.dumps({"subreddit": subreddit, "title": title, "post": post,
                                "summary": task.reference_answer(p).strip()}) + "\n")
    records = load_sft(str(path))
    assert [r.prompt for r in records] == prompts
    assert [task.gold_reward(r.prompt, r.completion) for r in records] == [1.0] * 5


# ---------------------------------------------------------------- tinyrlhf data summarize

SMALL = dict(n_train_prompts=300, n_eval_prompts=20, n_pairs=2500, n_rankings=20, n_binary=40, n_eval_pairs=30)


def test_write_task_data_end_to_end(tmp_path):
    counts = write_task_data("summarize", str(tmp_path / "a"), seed=0, **SMALL)
    assert {k: counts[k] for k in ("sft", "pairs", "rankings", "eval_prompts", "eval_pairs")} == \
        {"sft": 300, "pairs": 2500, "rankings": 20, "eval_prompts": 20, "eval_pairs": 30}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    ann = manifest["annotators"]
    assert manifest["task"] == "summarize" and manifest["max_gold"] == 1.0
    assert ann["inter_annotator_expected"] == pytest.approx(0.73, abs=1e-6)
    assert counts["inter_annotator"] == pytest.approx(0.73, abs=0.035)   # ~2,400 nonzero gaps: sd ~ 0.009
    assert 0.76 < ann["agreement_expected"] < 0.9                        # as family_tree's and positive_review's
    assert manifest["gold"]["eval_reference_mean"] == 1.0
    assert 0.3 < manifest["gold"]["sft_mean"] < 0.7
    evals = [json.loads(line) for line in open(tmp_path / "a" / "eval_prompts.jsonl")]
    assert all(e["meta"]["has_reference"] and e["completion"] for e in evals)
    # the same files in another process with another hash seed: nothing depends on set order
    small = {**SMALL, "n_pairs": 200, "n_train_prompts": 40}
    code = ("import sys; from tinyrlhf.tasks.generate import write_task_data; "
            f"write_task_data('summarize', sys.argv[1], seed=2, **{small!r})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "7"})
    write_task_data("summarize", str(tmp_path / "y"), seed=2, **small)
    for name in sorted(os.listdir(tmp_path / "y")):
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes(), name
