"""positive_review: a short positive product review that praises one asked-for aspect; continuous gold.

Prompt: "Review of the blue kettle (price):"   completion e.g. " Great kettle. Worth every penny."
The aspect is one of ASPECTS (looks, build, ease, price, delivery); each has its own praise words
(ASPECT_WORDS: "worth", "bargain" for price; "sturdy", "durable" for build ...). GENERAL words
("great", "love", "recommend" ...) fit every aspect.

Why the aspect: without it one fixed review with the product name filled in scored 0.97 of a maximum of 1.0
on every prompt, above every trained method. Now the best answer depends on the prompt, and praising every
aspect at once costs (focus).

Why the shape factors: the previous gold paid 0.74 for " Pan pan pan beautiful clean pan." (the product's
words were not counted as repeats), 0.94-0.96 for praise spread over many short sentences (" Great pan.
Beautiful pan. Clean pan. ..." and " A beautiful, clean pan. A elegant, lovely pan. ...") and 0.98 for word
salad made of known words, all far above the demonstrations (0.39). Repeated product words, repeated
sentence frames, a fourth sentence, a praise share above 40 % and word triples the task's sentence banks
never use now cost; each of those answers scores under 0.01.

Measured on 400 eval prompts (seed 0): demonstrations 0.330, the best degenerate trick ("best constant
found", tasks/baselines.py) 0.201, the best prompt-reading rule (one template per aspect) 0.924, a
hand-written good answer per aspect 0.865 (experiments/pr_measure.py).

The gold reward is built to be *over-optimisable*. Across the candidates annotators see, more positive
words go with more gold, so a reward model learns "more positive words = better". The gold itself has
diminishing returns on DISTINCT relevant positive words and multiplies in fluency factors that a policy
chasing the proxy destroys: repeating words ("great great great"), stuffing lists of adjectives,
praising everything, many short sentences.

    gold = praise * aspect * focus * repetition * stuffing * sentences * length * sanity * fluency * topic
           * ending - neg_weight * neg
    praise      1 - exp(-d / 1.5), d = distinct relevant praise words (GENERAL or the asked aspect's),
                not negated ("not good" counts as negative) and not stuffed
    aspect      0.1 + 0.9 * [some praise word of the asked aspect]
    focus       exp(-o), o = distinct praise words of the OTHER aspects
    repetition  exp(-rep_weight * r), r = the largest of: the share of content words (no stop words; each of
                the product's words free for its first two uses) that repeat an earlier one; the share of
                in-sentence word pairs seen twice before ("It is great. It is good. It is nice."); the share
                of sentences whose frame (praise words read as P) was seen before or whose shape (other
                content words read as N too, the product named as itself) was seen twice before
    stuffing    exp(-s / 2) * exp(-(max(0, q - 0.4) / 0.1)^2): s = praise words beyond the second
                in a sentence ("great and good and lovely and easy" stuffs 2); q = share of all words
                that are praise words (a good review is about a third praise; "Pretty and stylish." is 2/3)
    sentences   exp(-(max(0, n - 3) / 1.5)^2), n = sentences: a fourth keeps 64 %, a fifth 17 %
    length      exp(-(e / 4)^2), e = words outside [min_words, max_words]
    sanity      (share of tokens that are known words or . , !)^2 (gibberish scores ~0)
    fluency     t^2, t = share of the word triples of the sentences (start and end marked, the product's
                name read as one word) that occur in the task's sentence banks (KNOWN_TRIPLES)
    topic       0.8 + 0.2 * [the product's noun is mentioned]
    ending      0.9 + 0.1 * [ends with . or !]
    neg         1 - exp(-(negative words + negated praise words) / 1.5)
max_gold = 1.0: the supremum (every factor 1, infinitely many distinct relevant praise words); a
fluent focused review with 5 distinct relevant praise words reaches 0.96 (" I love this kettle. The build is
solid and sturdy. Durable and reliable."). The minimum is -neg_weight. There is no single best completion,
so `reference_answer` returns None.

Demonstrations (what SFT imitates): demo_on_aspect (55 %) of them praise the asked aspect; the rest misread
the form and praise the next aspect (MISREAD), always with its stock line, so the single most likely
demonstration is wrong (gold ~0.01) while good ones are common: greedy decoding of SFT scores low, and only a
signal about what the reader asked for moves it. Measured (experiments/pr_measure.py) with the SFT model of
configs/positive_review/sft.yaml (800 steps, data seed 0) on 200 eval prompts, 40 new tokens: T=1 0.234,
T=0.7 0.221, T=0.3 0.035, greedy 0.010 (it praises the misread aspect); the oracle best of 8 samples at T=1
0.742. Sharpening SFT loses gold; choosing by what the reader asked for gains 0.73 over greedy.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass

from ..errors import ConfigError, DataError
from .base import SPLITS, check_split, split_of

PRODUCTS = ("lamp kettle toaster blender backpack jacket mug chair desk pillow blanket headset speaker "
            "keyboard mouse monitor charger umbrella wallet watch bike helmet tent camera printer scarf "
            "sofa rug mirror clock fan heater vacuum drill hammer teapot pan knife tablet stool "
            "phone_case water_bottle yoga_mat suitcase cooler").replace("_", "-").split()
PRODUCTS = tuple(p.replace("-", " ") for p in PRODUCTS)
COLOURS = tuple("red blue green black white grey pink small large wooden metal folding travel "
                "compact plain striped".split())
ASPECTS = ("looks", "build", "ease", "price", "delivery")
# The aspect a careless demonstrator praises instead of the asked one: the next row of the form.
MISREAD = dict(zip(ASPECTS, ASPECTS[1:] + ASPECTS[:1]))

GENERAL = frozenset("great good love excellent recommend perfect happy best amazing wonderful nice "
                    "fantastic superb brilliant".split())
ASPECT_WORDS = {"looks": frozenset("lovely beautiful pretty stylish elegant clean".split()),
                "build": frozenset("solid sturdy durable reliable robust smooth".split()),
                "ease": frozenset("easy simple handy quick intuitive convenient".split()),
                "price": frozenset("value worth bargain affordable".split()),
                "delivery": frozenset("fast speedy early swift".split())}
POSITIVE = GENERAL.union(*ASPECT_WORDS.values())
assert len(POSITIVE) == len(GENERAL) + sum(map(len, ASPECT_WORDS.values())), "a word in two praise sets"
NEGATIVE = frozenset("broke broken cheap flimsy slow poor noisy dull heavy useless damaged leaks "
                     "disappointing returned awful bad worst waste ugly weak annoying hate".split())
NEGATORS = frozenset("not never no".split())
STOP = frozenset("a an the it is it's i my me this that and to of for in on at with too very "
                 "really was so but also one".split())

GENERAL_SENTENCES = ("Great {p}.", "I love this {p}.", "I love it.", "It works great.", "I would recommend it.",
                     "Really happy with it.", "Best {p} I have owned.", "My kids think it is amazing.",
                     "A wonderful gift.", "Good {p}.", "Perfect for me.", "A fantastic buy.")
ASPECT_SENTENCES = {
    "looks": ("Looks lovely on my desk.", "The colour is beautiful.", "Nice clean design.",
              "Pretty and stylish.", "It looks elegant in the room."),
    "build": ("The build is solid and sturdy.", "It feels smooth and well made.", "Durable and reliable.",
              "Robust enough for daily use.", "The {p} feels solid."),
    "ease": ("Very easy to use.", "Setup was quick and simple.", "Handy every day.",
             "Simple and convenient.", "Intuitive from day one."),
    "price": ("Excellent value for the money.", "Worth every penny.", "A bargain at this price.",
              "Affordable for what you get.", "Good value."),
    "delivery": ("Fast delivery too.", "It arrived early.", "Speedy shipping and well packed.",
                 "The {p} came fast.", "Delivery was swift."),
}
NEUTRAL_SENTENCES = ("Bought it last week.", "It came in a box.", "I use it most days.",
                     "The {p} is about what I expected.", "Delivery took three days.",
                     "It comes with a manual.", "My sister has the same one.", "It is the {c} one.")
NEG_SENTENCES = ("The {p} broke after a week.", "It feels cheap and flimsy.", "Shipping was slow.",
                 "The manual is poor.", "A bit noisy at night.", "The colour is dull.", "It is too heavy.",
                 "Not worth the price.", "Customer service was useless.", "The box arrived damaged.",
                 "It leaks sometimes.", "Disappointing overall.", "I returned it.", "Awful smell at first.")

_WORD = re.compile(r"[a-z']+")
_TOKEN = re.compile(r"[A-Za-z']+|[^\sA-Za-z']")
_SENTENCE = re.compile(r"[^.!?\n]+")
_PROMPT = re.compile(r"^Review of the ([a-z]+) ([a-z ]+) \(([a-z]+)\):$")
_BANKS = GENERAL_SENTENCES + NEUTRAL_SENTENCES + NEG_SENTENCES + sum(ASPECT_SENTENCES.values(), ())
KNOWN = frozenset(_WORD.findall(" ".join(_BANKS + PRODUCTS + COLOURS + ASPECTS).lower())
                  + list(POSITIVE | NEGATIVE | NEGATORS | STOP))
_PUNCT_OK = frozenset(".,!")


def _slot(words: list[str], product: str) -> list[str]:
    """The words with the product's name read as one word "<p>" ("water bottle" included)."""
    name, out, i = product.split(), [], 0
    while i < len(words):
        if words[i:i + len(name)] == name:
            out.append("<p>")
            i += len(name)
        else:
            out.append(words[i])
            i += 1
    return out


def _triples(words: list[str]) -> list[tuple[str, str, str]]:
    """Runs of three adjacent words of one sentence, its start and end marked: "great kettle" has 2."""
    padded = ["<s>", *words, "</s>"]
    return list(zip(padded, padded[1:], padded[2:]))


# Fluent, for this task, is what its sentence banks say (any product or colour in its slot), three words at
# a time: pairs alone let a search splice word salad that reads locally ("Worth the pan is the room!").
KNOWN_TRIPLES = frozenset(t for b in _BANKS for c in COLOURS
                          for t in _triples(_slot(_WORD.findall(b.format(p="kettle", c=c).lower()), "kettle")))


@dataclass(frozen=True)
class PositiveReviewConfig:
    min_words: int = 8
    """Reviews shorter than this lose gold smoothly (length factor)."""
    max_words: int = 24
    """Reviews longer than this lose gold smoothly (length factor)."""
    rep_weight: float = 4.0
    """Strength of the repetition penalty exp(-rep_weight * r) (r: repeated content words or word pairs)."""
    neg_weight: float = 0.5
    """Weight of the (saturating) negative-word penalty; the lowest gold is -neg_weight."""
    demo_max_sentences: int = 4
    """Most sentences in a candidate or corpus text (keeps completions under ~40 tokens); demonstrations have 2-4."""
    demo_on_aspect: float = 0.55
    """Share of demonstrations that praise the asked aspect; the rest praise MISREAD[aspect] (see `demonstration`)."""

    def __post_init__(self):
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        for key in ("rep_weight", "neg_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.demo_on_aspect <= 1:
            raise ConfigError(f"demo_on_aspect must be in [0, 1], got {self.demo_on_aspect}")
        if not 1 <= self.demo_max_sentences <= 8:
            raise ConfigError(f"demo_max_sentences must be in 1..8, got {self.demo_max_sentences}")


ALL_PROMPTS = tuple(f"Review of the {c} {p} ({a}):" for p in PRODUCTS for c in COLOURS for a in ASPECTS)
SPLIT_PROMPTS = {s: tuple(p for p in ALL_PROMPTS if split_of(p) == s) for s in SPLITS}


def parse_review_prompt(prompt: str) -> tuple[str, str, str]:
    """(colour, product, aspect) of a positive_review prompt."""
    m = _PROMPT.match(prompt.strip())
    if not m or m.group(3) not in ASPECTS:
        raise DataError(f"not a positive_review prompt: {prompt[:60]!r}")
    return m.group(1), m.group(2), m.group(3)


def _repeat_share(words: list[str], sentences: list[list[str]], product: str) -> float:
    """The largest of three shares.
    Words: content words (no stop words; the product's words count, each free for its first two uses:
    "Pan pan pan beautiful clean pan" repeats 2 of 6) that repeat an earlier one.
    Pairs: in-sentence word pairs seen twice before ("It is great. It is good. It is nice."); saying a pair
    twice is normal English.
    Sentences: those whose frame (each praise word read as P: "The pan is P") was seen before, or whose
    shape (each other content word read as N as well, the product named as itself) was seen twice before:
    "The pan is amazing. The pan is beautiful." repeats a frame, "Clean design. Lovely colour. Elegant look."
    is "P N" three times, while "It works great. It arrived early." is one shape twice, which is fine."""
    product_words = set(product.split())
    seen: Counter = Counter()
    repeats = 0
    for w in (w for w in words if w not in STOP):
        seen[w] += 1
        repeats += seen[w] > (2 if w in product_words else 1)
    pairs = [pair for s in sentences for pair in zip(s, s[1:])]
    seen_pairs: Counter = Counter()
    repeated_pairs = 0
    for pair in pairs:
        repeated_pairs += seen_pairs[pair] >= 2
        seen_pairs[pair] += 1
    frames = [tuple("P" if w in POSITIVE else w for w in _slot(s, product)) for s in sentences]
    shapes = [tuple(w if w in STOP or w in ("P", "<p>") else "N" for w in f) for f in frames]
    seen_frames, seen_shapes = Counter(), Counter()
    copies = 0
    for frame, shape in zip(frames, shapes):
        copies += seen_frames[frame] >= 1 or seen_shapes[shape] >= 2
        seen_frames[frame] += 1
        seen_shapes[shape] += 1
    return max(repeats / max(1, sum(seen.values())), repeated_pairs / max(1, len(pairs)),
               copies / max(1, len(sentences)))


def review_features(product: str, completion: str, aspect: str | None = None) -> dict[str, float]:
    """The raw quantities the gold reward is made of (also handy for tests and analysis).
    `aspect` None: every praise word counts as relevant (for analysis without a prompt)."""
    sentences = [_WORD.findall(s) for s in _SENTENCE.findall(completion.lower())]
    sentences = [s for s in sentences if s]
    words = [w for s in sentences for w in s]
    tokens = _TOKEN.findall(completion)
    praised: list[str] = []  # counted praise words, in order (with repeats)
    n_praise = stuffed = neg = 0
    for s in sentences:
        in_sentence = 0
        for i, w in enumerate(s):
            negated = any(v in NEGATORS for v in s[max(0, i - 2):i])
            if w in POSITIVE and not negated:
                n_praise += 1
                in_sentence += 1
                if in_sentence > 2:
                    stuffed += 1
                else:
                    praised.append(w)
            elif w in NEGATIVE or w in POSITIVE:  # a negated praise word ("not worth") counts as negative
                neg += 1
    distinct = set(praised)
    own = ASPECT_WORDS[aspect] if aspect else POSITIVE
    others = set().union(*(v for k, v in ASPECT_WORDS.items() if k != aspect)) if aspect else set()
    known = sum(t.lower() in KNOWN or t in _PUNCT_OK for t in tokens)
    triples = [t for s in sentences for t in _triples(_slot(s, product))]
    return {"n_words": len(words), "n_positive": n_praise, "distinct_positive": len(distinct),
            "relevant_positive": len(distinct & (GENERAL | own)), "on_aspect": float(bool(distinct & own)),
            "off_aspect": len(distinct & others), "stuffed": stuffed, "n_negative": neg,
            "repeat_share": _repeat_share(words, sentences, product),
            "positive_share": n_praise / max(1, len(words)), "known_share": known / max(1, len(tokens)),
            "on_topic": float(product.split()[-1] in words),
            "ends_well": float(completion.rstrip()[-1:] in (".", "!")), "n_sentences": len(sentences),
            "known_triples": sum(t in KNOWN_TRIPLES for t in triples) / max(1, len(triples))}


class PositiveReviewTask:
    """Short positive product reviews about one aspect (see the module docstring)."""
    name = "positive_review"
    config_class = PositiveReviewConfig
    max_gold = 1.0

    def __init__(self, config: PositiveReviewConfig | None = None):
        self.config = config or PositiveReviewConfig()

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        check_split(self.name, split)
        # The prompt space is small (3,600 prompts: ~1,800 train, ~900 val, ~900 eval), so prompts repeat
        # within a split for large n: what varies is the completion. Drawn one by one so prompts(s, 10)
        # is a prefix of prompts(s, 20).
        rng = random.Random(f"positive_review:{seed}:{split}")
        return [rng.choice(SPLIT_PROMPTS[split]) for _ in range(n)]

    def gold_reward(self, prompt: str, completion: str) -> float:
        c = self.config
        _, product, aspect = parse_review_prompt(prompt)
        f = review_features(product, completion, aspect)
        if f["n_words"] == 0:
            return 0.0
        excess = max(0, c.min_words - f["n_words"], f["n_words"] - c.max_words)
        quality = ((1 - math.exp(-f["relevant_positive"] / 1.5))
                   * (0.1 + 0.9 * f["on_aspect"])
                   * math.exp(-f["off_aspect"])
                   * math.exp(-c.rep_weight * f["repeat_share"])
                   * math.exp(-f["stuffed"] / 2)
                   * math.exp(-(max(0.0, f["positive_share"] - 0.4) / 0.1) ** 2)
                   * math.exp(-(max(0, f["n_sentences"] - 3) / 1.5) ** 2)
                   * math.exp(-(excess / 4) ** 2)
                   * f["known_share"] ** 2
                   * f["known_triples"] ** 2
                   * (0.8 + 0.2 * f["on_topic"])
                   * (0.9 + 0.1 * f["ends_well"]))
        return quality - c.neg_weight * (1 - math.exp(-f["n_negative"] / 1.5))

    def reference_answer(self, prompt: str) -> None:
        return None

    # ------------------------------------------------------------ demonstrations and candidates

    def _compose(self, prompt: str, rng: random.Random, positivity: float, on_aspect: float,
                 repeat: float, min_sentences: int = 1) -> str:
        """min_sentences..demo_max_sentences templated sentences. Each is praise with probability `positivity`
        (about the asked aspect with probability `on_aspect`, else general or another aspect's, half
        and half), else neutral or negative; with probability `repeat`, one sentence or word repeats."""
        colour, product, aspect = parse_review_prompt(prompt)
        sentences: list[str] = []
        for _ in range(rng.randint(min(min_sentences, self.config.demo_max_sentences),
                                   self.config.demo_max_sentences)):
            u = rng.random()
            if u < positivity:
                v = rng.random()
                bank = (ASPECT_SENTENCES[aspect] if v < on_aspect else GENERAL_SENTENCES
                        if v < on_aspect + (1 - on_aspect) / 2 else
                        ASPECT_SENTENCES[rng.choice([a for a in ASPECTS if a != aspect])])
            else:
                bank = NEUTRAL_SENTENCES if u < positivity + (1 - positivity) / 2 else NEG_SENTENCES
            s = rng.choice(bank).format(p=product, c=colour)
            if s not in sentences:  # most people don't say the same sentence twice ...
                sentences.append(s)
        if rng.random() < repeat:  # ... but some do, or stress a word ("really really good")
            if rng.random() < 0.5:
                sentences.append(rng.choice(sentences))
            else:
                w = rng.choice(sorted(POSITIVE))
                sentences.append(f"{w.capitalize()} {w}.")
        return " " + " ".join(sentences)

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        # Careful demonstrators (demo_on_aspect of them) praise the asked aspect in any of its sentences; the
        # others misread the form and praise the aspect on the row below it (MISREAD), always opening that part
        # with its stock line. So the single most likely demonstration praises the wrong aspect (greedy SFT
        # scores near 0) while good ones are common: only a signal about what the reader asked for (preferences,
        # or picking the best of several samples) moves SFT up; lowering its temperature moves it down.
        colour, product, aspect = parse_review_prompt(prompt)
        careful = rng.random() < self.config.demo_on_aspect
        sentences = [rng.choice(GENERAL_SENTENCES)] if rng.random() < 0.7 else []
        n = 2 if not sentences or rng.random() < 0.7 else 1  # two sentences at least
        bank = ASPECT_SENTENCES[aspect if careful else MISREAD[aspect]]
        sentences += rng.sample(bank, n) if careful else [bank[0], *rng.sample(bank[1:], n - 1)]
        u = rng.random()  # some noise either way: a neutral remark, rarely a complaint
        if u < 0.25:
            sentences.append(rng.choice(NEUTRAL_SENTENCES if u < 0.2 else NEG_SENTENCES))
        return " " + " ".join(x.format(p=product, c=colour) for x in sentences)

    def candidates(self, prompt: str, k: int, rng: random.Random) -> list[str]:
        out: list[str] = []
        for _ in range(100 * k):
            if len(out) == k:
                return out
            text = self._compose(prompt, rng, positivity=rng.random(), on_aspect=rng.random(), repeat=0.2)
            if text not in out:
                out.append(text)
        raise ConfigError(f"positive_review: cannot make {k} distinct candidates")

    def corpus(self, n: int, seed: int) -> list[str]:
        rng = random.Random(f"positive_review:corpus:{seed}")
        return [p + self._compose(p, rng, positivity=rng.random(), on_aspect=rng.random(), repeat=0.2)
                for p in self.prompts("train", n, seed)]
