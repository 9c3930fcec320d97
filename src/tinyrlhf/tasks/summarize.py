"""summarize: a TL;DR of a short synthetic Reddit post whose key facts are known; continuous gold.

Prompt: the summarize-from-feedback shape (data/public.py `tldr_prompt`; the posts are in summarize_posts.py)

    SUBREDDIT: r/relationships
    TITLE: Need advice about my boyfriend
    POST: We both like chess. Last week my boyfriend Jim forgot my birthday.

    Now he did not say sorry. He has a dog named Ben. Should I move out?
    TL;DR:

Reference answer (gold = max_gold = 1.0): the KEY facts in the post's words, openers dropped:
" My boyfriend Jim forgot my birthday. He did not say sorry. Should I move out?"
The key facts are who did what (the event), what made it worse (the complication, in 3 posts of 4) and what the
poster asks; the 2-3 DISTRACTORS (a pet, a job, a hobby, the weather ...) are true but do not belong in a TL;DR.

    gold = recall * fluency - distractor_weight * d - halluc_weight * (1 - 0.5^h) - length_weight * long
    recall    share of the key facts found; a fact is found when its core words appear in that order inside
              ONE sentence of the summary (split at . ! ? ;): the event needs the who (relation or name), its
              verb and its object ("Jim ... forgot ... birthday"); a complication or question its own words
              ("sorry"; "move"). Saying a fact twice counts once.
    fluency   min(1, b / fluent_share)^2, b = share of the word pairs inside a clause (split at punctuation
              and at and / but / so; a one-word clause counts as one unknown pair) that some template of the
              task contains, names abstracted. A keyword list ("Jim, forgot, birthday, sorry, move") has
              every core word and b = 0; " the the the" has no pair the templates know.
    d         distractors mentioned (their core word in a sentence: "dog", "chess", "exam" ...)
    h         distinct fact words (names, relations, core words, filled-in details; summarize_posts.CONTENT)
              that the prompt does not contain: an invented fact or entity. One costs 0.3 by default, two
              0.45, any number less than 0.6.
    long      1 - exp(-(e / length_scale)^2), e = words beyond max_words (18: the longest reference has 18)
max_gold = 1.0, reached by `reference_answer` (every key fact, every pair known, nothing else, within budget).
The empty answer scores 0; the lowest possible gold is -(3 * distractor_weight + halluc_weight + length_weight).

Why these pieces: recall alone pays copying the post (every key fact, 1.0); the length term makes that cost
~1 (a post has ~45 words), the distractor term makes a padded summary worse than a short one, and the
hallucination term makes inventing worse than leaving out. The clause order and fluency factor close the
keyword list and "every entity in the vocabulary" (which also hallucinates dozens of words). The battery of
such tricks, and the prompt-reading rules they are compared with, are in tasks/baselines.py. Measured on 400 eval
prompts (seed 0): the demonstrations score 0.50, the best trick (lead-2) 0.16, copying the post -0.31, the keyword
list -0.38; the best rule (the sentence naming the relation, and the question) 0.76. Demonstrations are imperfect
in ways preferences can fix: a distractor added (too long), a distractor instead of the complication or question,
an invented detail, the who left out ("He forgot my birthday."); a third of them are perfect. The SFT model of
configs/summarize/sft.yaml cut to 400 steps (one `tinyrlhf compare` seed, 24-token samples) scores -0.13 at T=1 and
0.62 greedy: it copies the relation, the event and the question but mostly invents the name (one invented word
costs 0.3), which is what preferences for "nothing invented" can teach.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..errors import ConfigError
from .base import check_split, split_of
from .summarize_posts import (ASKS, BIGRAMS, COMPLICATIONS, CONTENT, DISTRACTORS, EVENTS, NAMES, capitalise, clauses,
                              draw_distractor, draw_prompt, parse_post, sentences, words)

KEYS = ("event", "complication", "ask")
LONGEST_REFERENCE = 3 + max(len(e.split()) for e, _ in EVENTS) + max(len(c.split()) for c, _ in COMPLICATIONS) \
    + max(len(a.split()) for a, _ in ASKS)
"""Words of the longest reference (18): 'My coworker Ezra told everyone my secret.' (3 words of who + a 4-word
event) + a 5-word complication + a 6-word question."""


@dataclass(frozen=True)
class SummarizeConfig:
    max_words: int = 18
    """Length budget in words: longer summaries lose gold smoothly (>= 18, so every reference fits)."""
    length_scale: float = 6.0
    """Words past the budget at which the length penalty reaches 1 - 1/e of length_weight."""
    length_weight: float = 1.0
    """Largest length penalty (copying a whole post costs about this much)."""
    distractor_weight: float = 0.15
    """Gold lost per distractor (true but unimportant detail) in the summary."""
    halluc_weight: float = 0.6
    """Largest hallucination penalty: halluc_weight * (1 - 0.5^h) for h invented fact words."""
    fluent_share: float = 0.8
    """Share of known word pairs from which a summary counts as fully fluent (fluency factor 1)."""
    min_distractors: int = 2
    """Fewest distractor sentences in a post."""
    max_distractors: int = 3
    """Most distractor sentences in a post (the posts stay under ~100 tokens)."""
    complication_prob: float = 0.75
    """Share of posts with a complication (the posts without one have two key facts)."""
    demo_long_prob: float = 0.4
    """Share of demonstrations with a distractor added (too long)."""
    demo_swap_prob: float = 0.3
    """Share of demonstrations with a distractor instead of the complication or the question."""
    demo_halluc_prob: float = 0.15
    """Share of demonstrations with an invented detail (a wrong event or a detail the post lacks)."""
    demo_no_who_prob: float = 0.15
    """Share of demonstrations that say 'He' instead of who did it (the event then does not count)."""

    def __post_init__(self):
        if not LONGEST_REFERENCE <= self.max_words <= 200:
            raise ConfigError(f"max_words must be in {LONGEST_REFERENCE}..200 (every reference must fit), "
                              f"got {self.max_words}")
        for key in ("length_scale", "fluent_share"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.fluent_share > 1:
            raise ConfigError(f"fluent_share must be in (0, 1], got {self.fluent_share}")
        for key in ("length_weight", "distractor_weight", "halluc_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.min_distractors <= self.max_distractors <= 3:
            raise ConfigError("need 0 <= min_distractors <= max_distractors <= 3, got "
                              f"{self.min_distractors}, {self.max_distractors}")
        for key in ("complication_prob", "demo_long_prob", "demo_swap_prob", "demo_halluc_prob",
                    "demo_no_who_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")


def _in_order(sentence: list[str], core: tuple[str, ...]) -> bool:
    """Whether `core` is a subsequence of the sentence's words."""
    it = iter(sentence)
    return all(w in it for w in core)


def summary_features(post: dict, completion: str) -> dict:
    """The raw quantities the gold is made of, for a parsed post (handy for tests and analysis)."""
    sents = sentences(completion)
    rel, name = post["who"]

    def found(s: dict) -> bool:
        if s["kind"] == "event":
            return any(_in_order(x, (who, *s["core"])) for x in sents for who in (rel, name))
        return any(_in_order(x, s["core"]) for x in sents)

    keys = [post[k] for k in KEYS if post[k] is not None]
    pairs = known = 0
    for c in clauses(completion):
        pairs += max(1, len(c) - 1)
        known += sum((a, b) in BIGRAMS for a, b in zip(c, c[1:]))
    said = words(completion)
    invented = sorted({w for w in said if w in CONTENT and w not in post["words"]})
    return {"n_words": len(said), "n_key": len(keys), "key_found": sum(map(found, keys)),
            "distractors": sum(map(found, post["distractors"])), "invented": invented,
            "known_pairs": known / pairs if pairs else 0.0}


class SummarizeTask:
    """TL;DRs of synthetic Reddit posts with known key facts (see the module docstring)."""
    name = "summarize"
    answer_tokens = 32  # the longest reference is ~21 tokens, the long demonstrations ~36 (configs: max_new_tokens 32)
    config_class = SummarizeConfig
    max_gold = 1.0

    def __init__(self, config: SummarizeConfig | None = None):
        self.config = config or SummarizeConfig()

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        check_split(self.name, split)
        # Posts are drawn one by one from the (seed, split) stream and kept when their text falls in the split
        # (base.split_of), so the splits are disjoint for every pair of seeds and a shorter list is a prefix.
        c = self.config
        rng = random.Random(f"summarize:{seed}:{split}")
        out: list[str] = []
        while len(out) < n:
            p = draw_prompt(rng, c.min_distractors, c.max_distractors, c.complication_prob)
            if split_of(p) == split:
                out.append(p)
        return out

    def gold_reward(self, prompt: str, completion: str) -> float:
        c = self.config
        f = summary_features(parse_post(prompt), completion)
        if f["n_words"] == 0:
            return 0.0
        recall = f["key_found"] / f["n_key"]
        fluency = min(1.0, f["known_pairs"] / c.fluent_share) ** 2
        excess = max(0, f["n_words"] - c.max_words)
        return (recall * fluency - c.distractor_weight * f["distractors"]
                - c.halluc_weight * (1 - 0.5 ** len(f["invented"]))
                - c.length_weight * (1 - math.exp(-(excess / c.length_scale) ** 2)))

    def reference_answer(self, prompt: str) -> str:
        post = parse_post(prompt)
        return " " + " ".join(post[k]["clause"] for k in KEYS if post[k] is not None)

    # ------------------------------------------------------------ demonstrations and candidates

    def _invented(self, post: dict, rng: random.Random) -> str:
        """A sentence with fact words the post lacks: the wrong event, or a detail it never mentions."""
        rel, _ = post["who"]
        if rng.random() < 0.5:
            fresh = [e for e, core in EVENTS if not set(core.split()) & post["words"]]
            name = rng.choice([n for n in NAMES if n.lower() not in post["words"]])
            return capitalise(f"my {rel} {name} {rng.choice(fresh)}.")
        kinds = [i for i, (_, core) in enumerate(DISTRACTORS) if core.startswith("{") or core not in post["words"]]
        return draw_distractor(rng, post["pronouns"], set(post["words"]), kinds)[1]

    def _compose(self, post: dict, rng: random.Random, keep: list[str], n_distractors: int, n_invented: int,
                 no_who: bool = False, shuffle: bool = False) -> str:
        """The kept key facts in post order (the event said as 'He ...' when `no_who`), with `n_distractors` of
        the post's distractors and `n_invented` invented sentences put in at random places."""
        parts = []
        for kind in keep:
            s = post[kind]
            if s is not None:
                parts.append(capitalise(f"{post['pronouns']['he']} {s['clause'].split(' ', 3)[3]}")
                             if kind == "event" and no_who else s["clause"])
        extras = [d["clause"] for d in rng.sample(post["distractors"], min(n_distractors, len(post["distractors"])))]
        extras += [self._invented(post, rng) for _ in range(n_invented)]
        for e in extras:
            parts.insert(rng.randint(0, len(parts)), e)
        if shuffle:
            rng.shuffle(parts)
        return " " + " ".join(parts or [post["ask"]["clause"]])

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        # The key facts, then independently: a distractor added (too long), a distractor instead of the
        # complication or the question, an invented detail, the who left out. SFT learns the format and what a
        # summary is made of; preferences can teach "shorter, the key facts, nothing invented".
        c, post = self.config, parse_post(prompt)
        keep, n_distractors = list(KEYS), 0
        if rng.random() < c.demo_long_prob:
            n_distractors += 1
        if rng.random() < c.demo_swap_prob:
            keep.remove(rng.choice([k for k in KEYS[1:] if post[k] is not None]))
            n_distractors += 1
        n_invented = int(rng.random() < c.demo_halluc_prob)
        return self._compose(post, rng, keep, n_distractors, n_invented, no_who=rng.random() < c.demo_no_who_prob)

    def _candidate(self, post: dict, rng: random.Random) -> str:
        # From the reference to a padded, invented, shuffled one, most of them in between: pairs with small and
        # large gold gaps both (the annotators' noise is calibrated on these gaps).
        q = rng.uniform(0.6, 1.0)
        keep = [k for k in KEYS if rng.random() < q]
        return self._compose(post, rng, keep, rng.choice((0, 0, 0, 1, 1, 2)), rng.choice((0, 0, 0, 0, 0, 1, 1, 2)),
                             no_who=rng.random() < 0.15, shuffle=rng.random() < 0.15)

    def candidates(self, prompt: str, k: int, rng: random.Random) -> list[str]:
        post = parse_post(prompt)
        out: list[str] = []
        for _ in range(100 * k):
            if len(out) == k:
                return out
            text = self._candidate(post, rng)
            if text not in out:
                out.append(text)
        raise ConfigError(f"summarize: cannot make {k} distinct candidates")

    def corpus(self, n: int, seed: int) -> list[str]:
        rng = random.Random(f"summarize:corpus:{seed}")
        return [p + self._candidate(parse_post(p), rng) for p in self.prompts("train", n, seed)]


__all__ = ["SummarizeConfig", "SummarizeTask", "summary_features"]
