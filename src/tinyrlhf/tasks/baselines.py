"""Answers that need no learning, which a trained policy must beat to mean anything.

    degenerate_policies(task)        # name -> policy: tricks that game a carelessly written gold
    heuristic_rules(task)            # name -> policy: rules that read the prompt (the heuristic baseline)
    baseline_policies(task)          # both together (compare picks its heuristic among them on val)
    scores = score_policies(task, prompts)            # name -> mean gold on these prompts (both kinds)
    name, gold = best_baseline(task, prompts)         # the strongest of them

Each policy is a pure function of the prompt text (no randomness), so its score on a prompt list is one
exact number. The battery holds the answers a reviewer tries first -- constants, the empty answer, a copy
of the prompt, a repeated word -- and the tricks that game a gold reward written carelessly: listing
every name (set F1 pays a long list well), "None." for everything (a format bonus paid without
correctness), adjectives joined by "and" (stop words diluting a stuffing penalty), repeated product nouns
and praise spread over many short sentences (repeats the old gold did not count), and one fixed review
with the product name filled in. The rules read the prompt: one-hop lookups on family_tree, a template
per asked aspect on positive_review, and, for summarize,
copying the post, its first sentences (lead-N) and a keyword list of its fact words. A method that does not beat `best_baseline` has learnt nothing a
one-line rule could not do. tests/test_degenerate.py checks that every degenerate policy scores clearly below
the task's own demonstrations (what SFT imitates). A rule may score above them: it is the bar a learnt
policy is compared with, not a hole in the gold.
"""
from __future__ import annotations

import statistics
from typing import Callable

from .base import Task
from .family_tree import Family, format_answer, parse_prompt
from .positive_review import ASPECT_SENTENCES, ASPECT_WORDS, ASPECTS, POSITIVE, parse_review_prompt
from .summarize_posts import CONTENT, NAMES, RELS, post_parts, post_sentences, words

Policy = Callable[[str], str]


def _generic() -> dict[str, Policy]:
    """Policies that make sense for any task."""
    return {"empty": lambda p: "",
            "copy the prompt": lambda p: " " + p,
            "repeat a word": lambda p: " " + " ".join(["the"] * 12) + "."}


# ---------------------------------------------------------------- family_tree

def _founders(fam: Family) -> list[str]:
    """The couple on the first description line (the grandparents of everyone in generation 3)."""
    return list(fam.parents[fam.order[0]])


def _generation(fam: Family) -> dict[str, int]:
    """1 for the founders, 2 for their children and the people who married them, and so on."""
    depth = {n: 1 for n in _founders(fam)}
    for child, (a, b) in fam.parents.items():  # description order: parents always come first
        d = max(depth.get(a, 0), depth.get(b, 0))
        depth[a] = depth[b] = d
        depth[child] = d + 1
    return depth


def _family_answer(pick: Callable[[Family, str, str], list[str]]) -> Policy:
    """A policy answering with the names `pick(family, person, relation)` chooses, in description order."""
    def policy(prompt: str) -> str:
        fam, person, relation = parse_prompt(prompt)
        rank = {n: i for i, n in enumerate(fam.order)}
        return format_answer(sorted(dict.fromkeys(pick(fam, person, relation)), key=rank.__getitem__))
    return policy


def _family_tree(task: Task) -> dict[str, Policy]:
    return {
        "constant ' None.'": lambda p: " None.",
        "repeat the person's name": lambda p: " " + " ".join([parse_prompt(p)[1]] * 6) + ".",
        "the person asked about": _family_answer(lambda f, p, r: [p]),
        "all names in the family": _family_answer(lambda f, p, r: f.order),
        "names with parents minus the person": _family_answer(lambda f, p, r: [n for n in f.order
                                                                               if n in f.parents and n != p]),
        "founders' children for every question": _family_answer(lambda f, p, r: f.kids[_founders(f)[0]]),
    }


def _same_generation(fam: Family, person: str, relation: str) -> list[str]:
    depth = _generation(fam)
    return [n for n in fam.order if depth[n] == depth[person] and n != person]


def _shortcut(fam: Family, person: str, relation: str) -> list[str]:
    # The two one-hop lookups a model learns first, "None." for everything else.
    if relation == "parents":
        return list(fam.parents.get(person, ()))
    return _founders(fam) if relation == "grandparents" else []


def _family_tree_rules(task: Task) -> dict[str, Policy]:
    """Rules that read the family and the relation asked, without reasoning over more than one hop."""
    return {
        "parents for every question": _family_answer(lambda f, p, r: list(f.parents.get(p, ()))),
        "founders for every question": _family_answer(lambda f, p, r: _founders(f)),
        "same generation minus the person": _family_answer(_same_generation),
        "parents, founders as grandparents, else None": _family_answer(_shortcut),
    }


# ---------------------------------------------------------------- positive_review

def _product(prompt: str) -> str:
    return parse_review_prompt(prompt)[1]


def _aspect_words(prompt: str) -> list[str]:
    """The asked aspect's praise words, sorted: ["beautiful", "clean", "elegant", ...] for the looks."""
    return sorted(ASPECT_WORDS[parse_review_prompt(prompt)[2]])


def _aspect_sentences(prompt: str) -> list[str]:
    return [s.format(p=_product(prompt)) for s in ASPECT_SENTENCES[parse_review_prompt(prompt)[2]]]


# The best prompt-independent review we found: a greedy search that adds, one at a time, the sentence of
# the task's banks that raises the mean gold most on 2,000 train prompts (seed 0), until none does.
# One aspect's praise plus general praise: it hits the asked aspect on 1 prompt in 5.
_BEST_CONSTANT = " The build is solid and sturdy. I love this {p}. Really happy with it."


def _positive_review(task: Task) -> dict[str, Policy]:
    out: dict[str, Policy] = {
        "repeat 'great'": lambda p: " " + " ".join(["great"] * 10) + ".",
        "every positive word": lambda p: " " + ", ".join(sorted(POSITIVE)).capitalize() + ".",
        "adjectives joined by 'and'": lambda p: (" It is great and good and lovely and easy and solid and "
                                                 f"quick and nice {_product(p)}."),
        "'It is X.' frames": lambda p: " " + " ".join(f"It is {w}." for w in
                                                      ("great", "good", "nice", "amazing", "superb")),
        "one-word sentences": lambda p: " Great. Good. Nice. Amazing. Superb. Wonderful. Brilliant.",
        "one good sentence repeated": lambda p: f" Great {_product(p)}." * 5,
        "general praise, no aspect": lambda p: (f" Great {_product(p)}. I love it. I would recommend it. "
                                                "Really happy with it."),
        "praise every aspect": lambda p: (f" Great {_product(p)}. Looks lovely. Very sturdy. So easy to use. "
                                          "Worth every penny. Fast delivery."),
        "the old fixed review": lambda p: (f" Great {_product(p)}. Very easy to use. The build is solid and "
                                           "sturdy. Excellent value for the money. I would recommend it."),
        "best constant found": lambda p: _BEST_CONSTANT.format(p=_product(p)),
        # The reviewer's three exploits of the last gold, with the asked aspect's words filled in: repeated
        # product nouns, praise-word + product sentences, and two adjectives a sentence in one frame.
        "product noun repeated": lambda p: (lambda x, w: f" {x.capitalize()} {x} {x} {w[0]} {w[1]} {x}.")(
            _product(p), _aspect_words(p)),
        "praise-word + product sentences": lambda p: f" Great {_product(p)}." + "".join(
            f" {w.capitalize()} {_product(p)}." for w in _aspect_words(p)),
        "two adjectives a sentence": lambda p: (lambda x, w: "".join(
            f" A {a}, {b} {x}." for a, b in zip(w[::2], w[1::2])))(_product(p), _aspect_words(p)),
        # Kinds experiments/pr_trick_search.py tried against this gold; where a kind scores above 0.01 at all,
        # this is its best setting (more adjectives, sentences or frames only score lower).
        "adjective + other noun sentences": lambda p: "".join(
            f" {w.capitalize()} {n}." for w, n in zip(_aspect_words(p), ("design", "colour", "build", "price"))),
        "'The X is Y.' frame": lambda p: f" The {_product(p)} is {_aspect_words(p)[0]}.",
        "adjective list": lambda p: f" The {_product(p)} is {' and '.join(_aspect_words(p)[:2])}.",
        "general praise, product repeated": lambda p: f" Great {_product(p)}. I love this {_product(p)}.",
        "praise over five sentences": lambda p: (f" Great {_product(p)}. I love this {_product(p)}. "
                                                 + " ".join(_aspect_sentences(p)[:3])),
    }
    for aspect in ASPECTS:  # one aspect's praise whatever the prompt asks: right on 1 prompt in 5
        out[f"always praise the {aspect}"] = (lambda a: lambda p: " " + " ".join(
            [f"Great {_product(p)}."] + [s.format(p=_product(p)) for s in ASPECT_SENTENCES[a][:2]]))(aspect)
    return out


# One hand-picked template per aspect: three fluent sentences from the banks, three to five distinct praise
# words of the asked aspect and general ones, under 40 % praise words, the product named once (the best of
# every ordered choice of up to four bank sentences; delivery's words come one or two a sentence, so 0.86).
_TEMPLATES = {"looks": " I love this {p}. The colour is beautiful. Pretty and stylish.",
              "build": " I love this {p}. The build is solid and sturdy. Durable and reliable.",
              "ease": " I love this {p}. Very easy to use. Simple and convenient.",
              "price": " Great {p}. Worth every penny. Excellent value for the money.",
              "delivery": " Really happy with it. The {p} came fast. Speedy shipping and well packed."}


def _positive_review_rules(task: Task) -> dict[str, Policy]:
    """Rules that read the asked aspect and the product and fill a template."""
    return {
        "one template per aspect": lambda p: _TEMPLATES[parse_review_prompt(p)[2]].format(p=_product(p)),
        "'Great X.' and the aspect's stock line": lambda p: f" Great {_product(p)}. {_aspect_sentences(p)[0]}",
        "the aspect's praise-densest sentences": lambda p: " " + " ".join(sorted(
            _aspect_sentences(p), key=lambda s: -sum(w in POSITIVE for w in s.lower().strip(".").split())
            / len(s.split()))[:3]),
    }



# ---------------------------------------------------------------- summarize

def _lead(n: int) -> Policy:
    """The first n sentences of the post (the classic summarisation baseline)."""
    return lambda p: " " + " ".join([s for para in post_sentences(p) for s in para][:n])


def _keywords(prompt: str) -> list[str]:
    """The post's fact words (names, relations, event and question words, details) in order, once each."""
    return list(dict.fromkeys(w for w in words(post_parts(prompt)[2]) if w in CONTENT))


def _names_the_relation(sentence: str) -> bool:
    return bool(set(words(sentence)) & set(RELS))


def _first_event_sentence(prompt: str) -> str:
    """The first sentence of the post that names a relation ('my boyfriend'), else the first one."""
    sents = [s for para in post_sentences(prompt) for s in para]
    return next((s for s in sents if _names_the_relation(s)), sents[0])


def _summarize(task: Task) -> dict[str, Policy]:
    return {
        "copy the post": lambda p: " " + post_parts(p)[2],
        "lead-1": _lead(1), "lead-2": _lead(2), "lead-3": _lead(3),
        "the title": lambda p: " " + post_parts(p)[1],
        "keyword list": lambda p: " " + ", ".join(_keywords(p)).capitalize() + ".",
        "keywords without commas": lambda p: " " + " ".join(_keywords(p)).capitalize() + ".",
        "repeat the event": lambda p: " " + " ".join([_first_event_sentence(p)] * 3),
        "every entity": lambda p: " " + ", ".join(list(RELS) + list(NAMES)).capitalize() + ".",
        "a fixed summary": lambda p: " My boyfriend forgot my birthday. He did not say sorry. Should I move out?",
    }


def _summarize_rules(task: Task) -> dict[str, Policy]:
    """Rules that pick whole sentences of the post by where they are or what they look like."""
    def pick(test: Callable[[int, int, str], bool]) -> Policy:
        return lambda p: " " + " ".join(s for i, para in enumerate(post_sentences(p)) for j, s in enumerate(para)
                                        if test(i, j, s))
    return {
        "first sentence of each paragraph": pick(lambda i, j, s: j == 0),
        "the question": pick(lambda i, j, s: s.endswith("?")),
        "first sentence of each paragraph and the question": pick(lambda i, j, s: j == 0 or s.endswith("?")),
        "the sentence naming the relation, and the question": lambda p: " " + " ".join(
            [_first_event_sentence(p)] + [s for para in post_sentences(p) for s in para if s.endswith("?")]),
        "sentences about him or her, and the question": pick(lambda i, j, s: s.endswith("?") or _names_the_relation(s)
                                                             or bool(set(words(s)) & {"he", "she", "him", "her"})),
    }


_BATTERIES = {"family_tree": _family_tree, "positive_review": _positive_review, "summarize": _summarize}
_RULES = {"family_tree": _family_tree_rules, "positive_review": _positive_review_rules,
          "summarize": _summarize_rules}


def degenerate_policies(task: Task) -> dict[str, Policy]:
    """name -> policy (prompt -> completion) for `task`: the generic ones plus the task's own tricks."""
    battery = _BATTERIES.get(task.name)
    return {**_generic(), **(battery(task) if battery else {})}


def heuristic_rules(task: Task) -> dict[str, Policy]:
    """name -> policy for `task`: rules that read the prompt; the best of them is the heuristic baseline."""
    rules = _RULES.get(task.name)
    return rules(task) if rules else {}


def baseline_policies(task: Task) -> dict[str, Policy]:
    """Degenerate policies and rules together (names are distinct)."""
    tricks, rules = degenerate_policies(task), heuristic_rules(task)
    assert not set(tricks) & set(rules), f"a name is both a trick and a rule: {set(tricks) & set(rules)}"
    return {**tricks, **rules}


def score_policies(task: Task, prompts: list[str], policies: dict[str, Policy] | None = None) -> dict[str, float]:
    """Mean gold of each policy on `prompts` (default: every degenerate policy and rule)."""
    policies = baseline_policies(task) if policies is None else policies
    return {name: statistics.fmean(task.gold_reward(p, policy(p)) for p in prompts)
            for name, policy in policies.items()}


def best_baseline(task: Task, prompts: list[str]) -> tuple[str, float]:
    """(name, mean gold) of the strongest degenerate policy on `prompts` (first name wins a tie)."""
    scores = score_policies(task, prompts)
    name = max(scores, key=scores.__getitem__)
    return name, scores[name]
