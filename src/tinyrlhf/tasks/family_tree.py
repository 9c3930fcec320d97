"""family_tree: questions about one person's relatives in a small described family; exact gold reward.

Prompt: one line per child naming its two parents, then the question. A person's sex tag is
written at their first mention only.

    - Cal(m): Ann(f), Bob(m)
    - Dee(f): Ann, Bob
    - Fay(f): Cal, Eve(f)
    - Gus(m): Cal, Eve
    - Ivy(f): Dee, Hal(m)
    - Jon(m): Dee, Hal
    Q: cousins of Fay?
    A:

Reference answer: " Ivy, Jon." -- names in order of first mention, ", " between them, a final ".";
" None." when the set is empty.

Relations count BLOOD relatives only: people who married in have no parents in the tree, and the
spouses of the parents' siblings are not aunts or uncles.
    parents           the couple the person is a child of
    grandparents      the parents of the parents
    siblings          the other children of the same couple (there are no half-siblings)
    cousins           the children of the parents' siblings ("male cousins", "female cousins" filter by sex)
    aunts and uncles  the siblings of the parents

Gold reward = J * (1 + format_bonus * shape), so max_gold = 1 + format_bonus (1.2 by default).
    J      names are parsed from free text: every word equal to a pool name (case-insensitive).
           True set empty: 1 if no name is given and the text says "none"/"nobody"/"no one", else 0.
           True set non-empty: the Jaccard index |pred & true| / |pred | true| (order-insensitive,
           duplicates ignored), 0 if no name.
    shape  1 if the stripped completion is exactly "Name, Name." (distinct pool names) or "None.".
The format bonus multiplies J, so it is paid only in proportion to correctness: " None." earns it on
the questions whose answer is empty and nothing elsewhere, and a wrong list in a perfect shape earns 0.

Why Jaccard and not set F1 (measured on 400 eval prompts, seed 0, both with the bonus gated as above):
F1 = 2PR/(P+R) pays a long list generously. Listing every name that has parents (minus the person asked
about) gets 0.336 under F1 and 0.224 under Jaccard; the whole family 0.297 and 0.178. The trained SFT
model (configs/family_tree/sft.yaml) barely moves, 0.212 -> 0.194 sampled and 0.388 -> 0.379 greedy,
and so do the deliberately imperfect demonstrations, 1.008 -> 0.984. Jaccard is the share of the names
in the union that are right: a wrong name costs as much as a missing one. F0.5 (precision-weighted)
sits in between (0.261 for the first heuristic) and is harder to read. The battery of such tricks is
in tasks/baselines.py.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ..errors import ConfigError, DataError
from .base import check_split, split_of

# Short names, one sex each, none an everyday English word (free-text parsing treats any pool name
# as a name, so "May" or "Will" would turn ordinary words into false positives).
FEMALE_NAMES = ("Ada Amy Ann Ava Bea Bess Cara Cleo Dee Dora Eda Ella Emma Eva Eve Fay Fern Gia Gwen "
                "Hana Ida Ines Iris Ivy Jade Jan Joan Kay Kim Lea Lily Liz Lola Lucy Mae Mia Nan Nia "
                "Nora Ola Pam Rita Ruth Sue Tess Uma Vera Zoe").split()
MALE_NAMES = ("Abe Alf Ben Bob Cal Dan Del Dex Eli Ezra Finn Gus Hal Hugo Ian Ike Ivan Jay Jed Jim "
              "Joe Jon Kai Ken Lee Leo Lou Ned Nils Otto Paul Phil Raj Rex Ron Roy Sam Sid Ted Tim "
              "Tom Vic Walt Zak Omar Yves").split()
NAME_SEX = {**{n: "f" for n in FEMALE_NAMES}, **{n: "m" for n in MALE_NAMES}}
assert len(NAME_SEX) == len(FEMALE_NAMES) + len(MALE_NAMES), "a name is in both pools"

RELATIONS = ("parents", "grandparents", "siblings", "cousins", "male cousins", "female cousins",
             "aunts and uncles")
_NEEDS_GRANDPARENTS = {"grandparents", "cousins", "male cousins", "female cousins", "aunts and uncles"}

_PERSON = re.compile(r"([A-Z][a-z]+)(?:\(([mf])\))?")
_LINE = re.compile(r"^- ([A-Z][a-z]+(?:\([mf]\))?): ([A-Z][a-z]+(?:\([mf]\))?), ([A-Z][a-z]+(?:\([mf]\))?)$")
_QUESTION = re.compile(r"^Q: ([a-z ]+) of ([A-Z][a-z]+)\?$")
_WORD = re.compile(r"[A-Za-z]+")
_NONE = re.compile(r"\b(?:none|nobody|no one)\b", re.IGNORECASE)
_SHAPE = re.compile(r"^[A-Z][a-z]+(?:, [A-Z][a-z]+)*\.$")


@dataclass(frozen=True)
class FamilyTreeConfig:
    generations: int = 3
    """Generations in a family, counting the founding couple (>= 2; grandparent-type questions need 3)."""
    min_children: int = 1
    """Fewest children of a couple."""
    founder_min_children: int = 2
    """Fewest children of the founding couple (>= 2 so that aunts, uncles and cousins usually exist)."""
    max_children: int = 3
    """Most children of a couple."""
    marry_prob: float = 0.8
    """Chance that a child (not of the last generation) marries someone from outside and has children."""
    relations: tuple[str, ...] = RELATIONS
    """Relations the questions may ask about (subset of RELATIONS)."""
    demo_error_rate: float = 0.3
    """Share of demonstrations with one deliberate error: a missing, an extra or a wrong-relation name set, or a broken format."""
    candidate_bad_format: float = 0.25
    """Share of annotator candidates written in a broken shape, whatever names they give."""
    format_bonus: float = 0.2
    """Gold multiplier for the exact "Name, Name." / "None." shape: gold = J * (1 + format_bonus * shape),
    so the bonus is paid only with correctness; max_gold = 1 + format_bonus."""

    def __post_init__(self):
        object.__setattr__(self, "relations", tuple(self.relations))
        if not 2 <= self.generations <= 5:
            raise ConfigError(f"generations must be in 2..5, got {self.generations}")
        if not 1 <= self.min_children <= self.max_children <= 6:
            raise ConfigError("need 1 <= min_children <= max_children <= 6, got "
                              f"{self.min_children}, {self.max_children}")
        if not 1 <= self.founder_min_children <= self.max_children:
            raise ConfigError("need 1 <= founder_min_children <= max_children, got "
                              f"{self.founder_min_children}")
        for key in ("marry_prob", "demo_error_rate"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if self.format_bonus < 0:
            raise ConfigError(f"format_bonus must be >= 0, got {self.format_bonus}")
        bad = [r for r in self.relations if r not in RELATIONS]
        if bad or not self.relations:
            raise ConfigError(f"relations: unknown {bad} (valid: {', '.join(RELATIONS)})")
        if self.generations < 3 and all(r in _NEEDS_GRANDPARENTS for r in self.relations):
            raise ConfigError(f"relations {list(self.relations)} need generations >= 3")


@dataclass
class Family:
    """A parsed description. Every other method works from this (the prompt text is the only state)."""
    order: list[str] = field(default_factory=list)           # names by first mention
    sex: dict[str, str] = field(default_factory=dict)
    parents: dict[str, tuple[str, str]] = field(default_factory=dict)
    kids: dict[str, list[str]] = field(default_factory=dict)  # a parent -> children (both parents)

    def _see(self, token: str) -> str:
        name, tag = _PERSON.fullmatch(token).groups()
        if name not in self.sex:
            if tag is None:
                raise DataError(f"family_tree: first mention of {name} has no sex tag")
            self.order.append(name)
            self.sex[name] = tag
        return name

    def siblings(self, x: str) -> list[str]:
        couple = self.parents.get(x)
        return [c for c in self.kids[couple[0]] if c != x] if couple else []

    def relatives(self, person: str, relation: str) -> list[str]:
        """The true answer set, in order of first mention."""
        par = self.parents.get(person, ())
        aunts = [a for p in par for a in self.siblings(p)]
        if relation == "parents":
            found = list(par)
        elif relation == "grandparents":
            found = [g for p in par for g in self.parents.get(p, ())]
        elif relation == "siblings":
            found = self.siblings(person)
        elif relation == "aunts and uncles":
            found = aunts
        elif relation.endswith("cousins"):
            found = [c for a in aunts for c in self.kids.get(a, [])]
            if relation != "cousins":
                found = [c for c in found if self.sex[c] == relation[0]]
        else:
            raise DataError(f"family_tree: unknown relation '{relation}'")
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(set(found), key=rank.__getitem__)

    def can_ask(self, person: str, relation: str) -> bool:
        if relation in _NEEDS_GRANDPARENTS:
            return any(p in self.parents for p in self.parents.get(person, ()))
        return person in self.parents


def parse_description(lines: list[str]) -> Family:
    fam = Family()
    for line in lines:
        m = _LINE.match(line)
        if not m:
            raise DataError(f"family_tree: cannot parse description line {line!r}")
        child, a, b = fam._see(m.group(1)), fam._see(m.group(2)), fam._see(m.group(3))
        fam.parents[child] = (a, b)
        fam.kids.setdefault(a, []).append(child)
        fam.kids.setdefault(b, []).append(child)
    return fam


def parse_prompt(prompt: str) -> tuple[Family, str, str]:
    """(family, person, relation) from a family_tree prompt."""
    lines = prompt.strip().split("\n")
    if len(lines) < 3 or lines[-1] != "A:":
        raise DataError(f"not a family_tree prompt: {prompt[:60]!r}")
    q = _QUESTION.match(lines[-2])
    if not q:
        raise DataError(f"family_tree: cannot parse question {lines[-2]!r}")
    fam = parse_description(lines[:-2])
    person, relation = q.group(2), q.group(1)
    if person not in fam.sex or relation not in RELATIONS:
        raise DataError(f"family_tree: bad question {lines[-2]!r}")
    return fam, person, relation


def format_answer(names: list[str]) -> str:
    return " " + (", ".join(names) if names else "None") + "."


def answer_names(completion: str) -> set[str]:
    """Every word of `completion` that is a pool name (case-insensitive), capitalised."""
    return {w.capitalize() for w in _WORD.findall(completion) if w.capitalize() in NAME_SEX}


def answer_jaccard(truth: list[str], completion: str) -> float:
    """Jaccard index of the names in `completion` against `truth` (see the module docstring)."""
    pred = answer_names(completion)
    if not truth:
        return 1.0 if not pred and _NONE.search(completion) else 0.0
    return len(pred & set(truth)) / len(pred | set(truth))


def exact_shape(completion: str) -> bool:
    text = completion.strip()
    if text == "None.":
        return True
    if not _SHAPE.match(text):
        return False
    names = text[:-1].split(", ")
    return all(n in NAME_SEX for n in names) and len(set(names)) == len(names)


def _bad_formats(names: list[str]) -> list[str]:
    """The right names in a broken shape (J kept, format bonus lost)."""
    if not names:
        return [" None", " none.", " Nobody.", " None. None."]
    joined = ", ".join(names)
    return [" " + joined, " " + " and ".join(names), " " + " ".join(names) + ".",
            " " + joined.lower() + ".", " They are " + joined + ".", " " + joined + ", " + names[0] + "."]


class FamilyTreeTask:
    """Questions about relatives in a described family (see the module docstring)."""
    name = "family_tree"
    config_class = FamilyTreeConfig

    def __init__(self, config: FamilyTreeConfig | None = None):
        self.config = config or FamilyTreeConfig()
        self.max_gold = 1.0 + self.config.format_bonus

    # ------------------------------------------------------------ prompts

    def _family_lines(self, rng: random.Random) -> list[str] | None:
        """Render a random family, or None if it ran out of names (then the caller redraws)."""
        c = self.config
        pool = {"f": FEMALE_NAMES[:], "m": MALE_NAMES[:]}
        for names in pool.values():
            rng.shuffle(names)
        seen: set[str] = set()

        def person(name: str, sex: str) -> str:  # the sex tag only at the first mention
            if name in seen:
                return name
            seen.add(name)
            return f"{name}({sex})"

        first = rng.choice("mf")
        other = "f" if first == "m" else "m"
        couples = [(pool[first].pop(), first, pool[other].pop(), other)]
        lines = []
        for gen in range(2, c.generations + 1):
            next_couples = []
            for a, sa, b, sb in couples:
                kids = []
                low = c.founder_min_children if gen == 2 else c.min_children
                for _ in range(rng.randint(low, c.max_children)):
                    sex = rng.choice("mf")
                    if not pool[sex]:
                        return None
                    kids.append((pool[sex].pop(), sex))
                # One line per child, naming its parents: "- Fay(f): Cal, Eve(f)". Every name follows a
                # space as in the answer (" Cal" is one BPE token in both places), so "parents" is a
                # one-hop copy a tiny model learns; grandparents, siblings, aunts and cousins need more
                # hops, which is what leaves room above SFT.
                for k, s in kids:
                    lines.append(f"- {person(k, s)}: {person(a, sa)}, {person(b, sb)}")
                for k, s in kids:
                    if gen < c.generations and rng.random() < c.marry_prob:
                        o = "f" if s == "m" else "m"
                        if not pool[o]:
                            return None
                        next_couples.append((k, s, pool[o].pop(), o))
            couples = next_couples
        return lines

    def _draw_prompt(self, rng: random.Random) -> str | None:
        lines = self._family_lines(rng)
        if lines is None:
            return None
        fam = parse_description(lines)
        askable = [(r, [p for p in fam.order if fam.can_ask(p, r)]) for r in self.config.relations]
        askable = [(r, ps) for r, ps in askable if ps]
        if not askable:  # e.g. nobody in generation 2 married: no grandchildren to ask about
            return None
        relation, people = rng.choice(askable)
        return "\n".join(lines) + f"\nQ: {relation} of {rng.choice(people)}?\nA:"

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        check_split(self.name, split)
        out: list[str] = []
        i = 0
        while len(out) < n:
            # Why a fresh stream per index: prompt i never depends on n, so prompts(s, 10) is a prefix
            # of prompts(s, 20). Why `split_of` (a hash of the text): the splits are disjoint by
            # construction, for every seed.
            prompt = self._draw_prompt(random.Random(f"family_tree:{seed}:{split}:{i}"))
            i += 1
            if prompt is not None and split_of(prompt) == split:
                out.append(prompt)
            if i > 50 * n + 1000:
                raise ConfigError("family_tree: cannot draw prompts with this config (families too big?)")
        return out

    # ------------------------------------------------------------ gold

    def gold_reward(self, prompt: str, completion: str) -> float:
        fam, person, relation = parse_prompt(prompt)
        truth = fam.relatives(person, relation)
        return answer_jaccard(truth, completion) * (1.0 + self.config.format_bonus * exact_shape(completion))

    def reference_answer(self, prompt: str) -> str:
        fam, person, relation = parse_prompt(prompt)
        return format_answer(fam.relatives(person, relation))

    # ------------------------------------------------------------ demonstrations and candidates

    def _name_sets(self, prompt: str, rng: random.Random) -> dict[str, list[list[str]]]:
        """Name sets of each kind of quality for this prompt (some lists may be empty)."""
        fam, person, relation = parse_prompt(prompt)
        truth = fam.relatives(person, relation)
        outsiders = [n for n in fam.order if n not in truth]
        rank = {n: i for i, n in enumerate(fam.order)}
        out: dict[str, list[list[str]]] = {"correct": [truth]}
        out["missing"] = [[t for t in truth if t != d] for d in truth]
        # Extra / swapped names come from the same family (the person, siblings, parents...): plausible
        # mistakes, unlike random pool names, and the kind a model trained on these prompts makes.
        out["extra"] = [sorted(truth + [x], key=rank.__getitem__) for x in outsiders]
        out["swap"] = [sorted([t for t in truth if t != d] + [x], key=rank.__getitem__)
                       for d in truth[:2] for x in outsiders[:4]]
        others = [fam.relatives(person, r) for r in RELATIONS if r != relation and fam.can_ask(person, r)]
        out["relation"] = [o for o in others if o != truth]
        out["none"] = [[]] if truth else [[rng.choice(fam.order)]]
        out["random"] = [[n for n in fam.order if rng.random() < 0.3] or [rng.choice(fam.order)]]
        return out

    def _render(self, names: list[str], rng: random.Random, p_bad: float) -> str:
        """The answer text; with probability p_bad in a broken shape. Breaking the shape independently
        of which names are given keeps format from predicting correctness (else a reward model learns
        the shortcut "broken format = right names")."""
        if rng.random() < p_bad:
            return rng.choice(_bad_formats(names))
        return format_answer(names)

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        if rng.random() >= self.config.demo_error_rate:
            return self.reference_answer(prompt)
        sets = self._name_sets(prompt, rng)
        kinds = [k for k in ("missing", "extra", "relation", "format") if k == "format" or sets[k]]
        kind = rng.choice(kinds)
        if kind == "format":
            return rng.choice(_bad_formats(sets["correct"][0]))
        return format_answer(rng.choice(sets[kind]))

    def candidates(self, prompt: str, k: int, rng: random.Random) -> list[str]:
        sets = self._name_sets(prompt, rng)
        # Weights: the correct answer and near misses are common, so pairs span small and large gold gaps.
        weights = {"correct": 4, "missing": 2, "extra": 2, "swap": 1, "relation": 2, "none": 1, "random": 1}
        kinds = [kd for kd in weights if sets[kd]]
        out: list[str] = []
        for _ in range(50 * k):
            if len(out) == k:
                break
            kind = rng.choices(kinds, [weights[kd] for kd in kinds])[0]
            text = self._render(rng.choice(sets[kind]), rng, self.config.candidate_bad_format)
            if text not in out:
                out.append(text)
        # Rarely needed: small families run out of distinct variants -> fall back to name subsets.
        fam = parse_prompt(prompt)[0]
        for _ in range(1000 * k):
            if len(out) == k:
                return out
            subset = [n for n in fam.order if rng.random() < 0.5]
            text = rng.choice([format_answer(subset)] + _bad_formats(subset))
            if text not in out:
                out.append(text)
        if len(out) < k:
            raise ConfigError(f"family_tree: cannot make {k} distinct candidates for this prompt")
        return out

    def corpus(self, n: int, seed: int) -> list[str]:
        rng = random.Random(f"family_tree:corpus:{seed}")
        return [p + (self.reference_answer(p) if i % 2 == 0 else self.demonstration(p, rng))
                for i, p in enumerate(self.prompts("train", n, seed))]
