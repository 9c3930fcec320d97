"""The posts of the `summarize` task: their vocabulary, how one is drawn, and how one is read back.

A post is written from four banks of templated sentences, each with CORE words that say which fact it is:
    EVENTS          what happened ("my boyfriend Jim forgot my birthday"): the who (relation or name), a verb
                    and an object; KEY
    COMPLICATIONS   what made it worse ("he did not say sorry"); KEY, in 3 posts of 4
    ASKS            what the poster asks ("Should I move out?"); KEY, always the post's last sentence
    DISTRACTORS     true details that do not belong in a summary ("He has a dog named Ben."); 2-3 a post
The prompt is exactly data/public.py's `tldr_prompt(post, title, subreddit)`, the shape of the summarize-from-
feedback rows, so a model trained here reads those and the other way round:

    SUBREDDIT: r/relationships
    TITLE: Need advice about my boyfriend
    POST: We both like chess. Last week my boyfriend Jim forgot my birthday.

    Now he did not say sorry. He has a dog named Ben. Should I move out?
    TL;DR:

`parse_post` reads every sentence back with the templates' regular expressions (the prompt is the only state),
so the gold reward works in any process. Core words never repeat across facts (checked at import), and the
vocabulary is a few hundred words so that a 2,048-token BPE holds it.
"""
from __future__ import annotations

import random
import re
from itertools import product

from ..data.public import tldr_prompt
from ..errors import DataError
from .family_tree import FEMALE_NAMES, MALE_NAMES

NAMES = tuple(FEMALE_NAMES[:20] + MALE_NAMES[:20])
NAME_SEX = {n: "f" if n in FEMALE_NAMES else "m" for n in NAMES}
# relation -> (subreddit, sex or None when the name decides)
RELS = {"boyfriend": ("relationships", "m"), "girlfriend": ("relationships", "f"), "husband": ("relationships", "m"),
        "wife": ("relationships", "f"), "sister": ("family", "f"), "brother": ("family", "m"),
        "mom": ("family", "f"), "dad": ("family", "m"), "roommate": ("roommates", None),
        "friend": ("friendship", None), "coworker": ("work", None), "boss": ("work", None)}
PRONOUNS = {"m": {"he": "he", "him": "him"}, "f": {"he": "she", "him": "her"}}
SLOTS = {"years": ("two", "three", "five", "ten"), "pet": ("dog", "cat", "parrot", "rabbit", "hamster"),
         "place": ("bakery", "bank", "school", "hospital", "library"),
         "hobby": ("hiking", "movies", "cooking", "football", "chess"), "weather": ("rainy", "sunny", "cold"),
         "day": ("monday", "friday", "sunday"), "rel2": ("cousin", "neighbour", "classmate", "teacher", "landlord"),
         "spot": ("park", "beach", "station", "river"), "item": ("sofa", "camera", "guitar", "tent")}

# (phrase, core words). An event's core is its verb and object; the who is checked apart.
EVENTS = (("forgot my birthday", "forgot birthday"), ("read my messages", "read messages"),
          ("lost my keys", "lost keys"), ("broke my phone", "broke phone"), ("ate my lunch", "ate lunch"),
          ("sold my bike", "sold bike"), ("missed my party", "missed party"), ("crashed my car", "crashed car"),
          ("lied about the money", "lied money"), ("cancelled our trip", "cancelled trip"),
          ("took my jacket", "took jacket"), ("told everyone my secret", "told secret"),
          ("skipped our dinner", "skipped dinner"), ("hid my wallet", "hid wallet"))
COMPLICATIONS = (("{he} thinks it is fine", "fine"), ("{he} ignores me", "ignores"),
                 ("{he} blamed me for it", "blamed"), ("{he} did not say sorry", "sorry"),
                 ("{he} laughed about it", "laughed"), ("{he} did it again", "again"),
                 ("{he} acts like nothing happened", "nothing happened"), ("{he} yelled at me", "yelled"))
ASKS = (("Am I wrong to be angry?", "angry"), ("Should I just let it go?", "let go"),
        ("Should I stop talking to {him}?", "stop"), ("How do I bring it up?", "bring"),
        ("Should I move out?", "move"), ("Is it time to end things?", "end"),
        ("Should {he} pay me back?", "pay"), ("Should I say I am upset?", "upset"))
# A distractor's core may be a slot: the word filled in is what marks it in a summary.
DISTRACTORS = (("I have known {him} for {years} years.", "known"), ("{he} has a {pet} named {name2}.", "{pet}"),
               ("I work at a {place}.", "{place}"), ("We both like {hobby}.", "{hobby}"),
               ("It was a {weather} {day}.", "{day}"), ("My {rel2} {name2} thinks it is funny.", "funny"),
               ("I have a big exam next week.", "exam"), ("We live near the {spot}.", "{spot}"),
               ("I am saving for a new {item}.", "{item}"))
TITLES = ("My {rel} {event}", "Need advice about my {rel}", "Not sure what to do about my {rel}",
          "Problems with my {rel}", "Am I overreacting?")
OPENERS = {"event": ("", "Last week ", "Yesterday "), "complication": ("", "Now ", "Then ")}

_SENTENCE = re.compile(r"[^.!?;]+")
_CLAUSE = re.compile(r"[^.,;:!?]+")
_WORD = re.compile(r"[a-z']+")
_PROMPT = re.compile(r"SUBREDDIT: r/(\w+)\nTITLE: (.+)\nPOST: (.+)\nTL;DR:", re.DOTALL)
_SPLIT = re.compile(r"(?<=[.?!])\s+")
_JOINERS = frozenset(("and", "but", "so"))
NAME_TOKEN = "<name>"
_LOWER_NAMES = {n.lower() for n in NAMES}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[list[str]]:
    """The words of each sentence (split at . ! ? ;): a fact counts only inside one."""
    return [w for w in map(words, _SENTENCE.findall(text)) if w]


def clauses(text: str) -> list[list[str]]:
    """The words of each clause (split at punctuation and at 'and', 'but', 'so'), names as NAME_TOKEN."""
    out = []
    for chunk in _CLAUSE.findall(text.lower()):
        current: list[str] = []
        for w in _WORD.findall(chunk):
            if w in _JOINERS:
                out.append(current)
                current = []
            else:
                current.append(NAME_TOKEN if w in _LOWER_NAMES else w)
        out.append(current)
    return [c for c in out if c]


def capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------- the vocabulary the gold knows

def _all_templates() -> list[str]:
    """Every sentence shape a post, a title or a summary is written in (slots in braces)."""
    events = [e for e, _ in EVENTS]
    out = [o + "my {rel} {name} " + e for o in OPENERS["event"] for e in events]
    out += ["{he} " + e for e in events]  # the summary that forgets who did it
    out += [o + c for o in OPENERS["complication"] for c, _ in COMPLICATIONS]
    out += [a for a, _ in ASKS] + [d for d, _ in DISTRACTORS]
    out += [t.replace("{event}", e) for t in TITLES for e in events]
    return out


def _fillers(token: str) -> tuple[str, ...]:
    slot = token[1:-1] if token.startswith("{") else None
    if slot is None:
        return (token,)
    if slot in ("name", "name2"):
        return (NAME_TOKEN,)
    if slot in ("he", "him"):
        return tuple(PRONOUNS[s][slot] for s in "mf")
    return tuple(RELS) if slot == "rel" else SLOTS[slot]


def _bigram_bank() -> frozenset:
    bank = set()
    for template in _all_templates():
        for chunk in re.findall(r"[^.,;:!?]+", template.lower()):
            tokens = [_fillers(t) for t in re.findall(r"\{\w+\}|[a-z']+", chunk)]
            for a, b in zip(tokens, tokens[1:]):
                bank.update(product(a, b))
    return frozenset(bank)


BIGRAMS = _bigram_bank()
"""Word pairs (names as NAME_TOKEN) that occur inside a clause of some template: what 'fluent' means here."""
KEY_CORES = [tuple(c.split()) for _, c in EVENTS + COMPLICATIONS + ASKS]
CONTENT = frozenset(_LOWER_NAMES | set(RELS) | {w for c in KEY_CORES for w in c}
                    | {c for _, c in DISTRACTORS if not c.startswith("{")} | {v for vs in SLOTS.values() for v in vs})
"""The fact words: a summary word in CONTENT that the prompt does not contain is a hallucination."""
_cores = [w for c in KEY_CORES for w in c] + [c for _, c in DISTRACTORS if not c.startswith("{")]
assert len(_cores) == len(set(_cores)), "a core word belongs to two facts"
assert not set(_cores) & ({v for vs in SLOTS.values() for v in vs} | set(RELS)), "a core word is also a filler"


# ---------------------------------------------------------------- reading a post back

def _regex(template: str, openers: tuple[str, ...] = ("",)) -> re.Pattern:
    def group(m):
        slot = m.group(1)
        alts = {"name": NAMES, "name2": NAMES, "rel": tuple(RELS), "he": ("he", "she"),
                "him": ("him", "her")}.get(slot) or SLOTS[slot]
        return f"(?P<{slot}>{'|'.join(alts)})"
    body = re.sub(r"\\\{(\w+)\\\}", group, re.escape(template))
    opener = "(?P<opener>" + "|".join(re.escape(o) for o in openers) + ")"
    return re.compile(f"{opener}{body}", re.IGNORECASE)


# (kind, compiled pattern, core words with slots) for every sentence a post may hold
PATTERNS = ([("event", _regex("my {rel} {name} " + e + ".", OPENERS["event"]), c) for e, c in EVENTS]
            + [("complication", _regex(c + ".", OPENERS["complication"]), k) for c, k in COMPLICATIONS]
            + [("ask", _regex(a), k) for a, k in ASKS] + [("distractor", _regex(d), k) for d, k in DISTRACTORS])


def _read_sentence(text: str, para: int) -> dict:
    for kind, pattern, core in PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            slots = {k: v.lower() for k, v in m.groupdict().items() if v is not None}
            return {"kind": kind, "text": text, "para": para, "clause": capitalise(text[len(m.group("opener")):]),
                    "core": tuple(slots[w[1:-1]] if w.startswith("{") else w for w in core.split()),
                    "slots": slots}
    raise DataError(f"summarize: a sentence no template wrote: {text[:60]!r}")


def post_parts(prompt: str) -> tuple[str, str, str]:
    """(subreddit, title, post) of a summarize prompt (the fields of a summarize-from-feedback row's `info`)."""
    m = _PROMPT.fullmatch(prompt.strip())
    if not m:
        raise DataError(f"not a summarize prompt: {prompt[:60]!r}")
    return m.group(1), m.group(2), m.group(3)


def post_sentences(prompt: str) -> list[list[str]]:
    """The sentences of each paragraph of the post, as written."""
    return [_SPLIT.split(p.strip()) for p in post_parts(prompt)[2].split("\n\n")]


def parse_post(prompt: str) -> dict:
    """The post's facts: {"sentences": [...], "event", "complication" (or None), "ask": one sentence dict each
    (kind, text, para, clause = the sentence without its opener, core, slots), "distractors": [...],
    "who": (relation, name), "pronouns": {"he", "him"}, "words": every word of the prompt, "paragraphs"
    (post_sentences), "title", "subreddit"}."""
    subreddit, title, post = post_parts(prompt)
    paragraphs = post_sentences(prompt)
    read = [_read_sentence(s, i) for i, p in enumerate(paragraphs) for s in p]
    kinds = [s["kind"] for s in read]
    if kinds.count("event") != 1 or kinds.count("ask") != 1 or kinds.count("complication") > 1:
        raise DataError(f"summarize: a post needs one event, one question and at most one complication: {post[:60]!r}")
    by_kind = {s["kind"]: s for s in read}
    rel, name = by_kind["event"]["slots"]["rel"], by_kind["event"]["slots"]["name"]
    sex = RELS[rel][1] or NAME_SEX[capitalise(name)]
    return {"sentences": read, "event": by_kind["event"], "complication": by_kind.get("complication"),
            "ask": by_kind["ask"], "distractors": [s for s in read if s["kind"] == "distractor"],
            "who": (rel, name), "pronouns": PRONOUNS[sex], "words": frozenset(words(prompt)),
            "paragraphs": paragraphs, "title": title, "subreddit": subreddit}


# ---------------------------------------------------------------- writing one

def fill(template: str, pronouns: dict, values: dict) -> str:
    text = template
    for slot, value in {**pronouns, **values}.items():
        text = text.replace("{" + slot + "}", value)
    return text


def draw_distractor(rng: random.Random, pronouns: dict, avoid: set[str], kinds: list[int]) -> tuple[int, str]:
    """(bank index, sentence) of a distractor of one of `kinds` whose filled-in words are not in `avoid`."""
    i = rng.choice(kinds)
    values = {s: rng.choice([v for v in vals if v not in avoid]) for s, vals in SLOTS.items()}
    values["name2"] = rng.choice([n for n in NAMES if n.lower() not in avoid])
    return i, capitalise(fill(DISTRACTORS[i][0], pronouns, values))


def draw_prompt(rng: random.Random, min_distractors: int, max_distractors: int, complication_prob: float) -> str:
    rel = rng.choice(sorted(RELS))
    subreddit, sex = RELS[rel]
    name = rng.choice([n for n in NAMES if sex is None or NAME_SEX[n] == sex])
    pron = PRONOUNS[sex or NAME_SEX[name]]
    event = rng.choice(EVENTS)[0]
    used = {name.lower()}
    distractors = []
    for i in rng.sample(range(len(DISTRACTORS)), rng.randint(min_distractors, max_distractors)):
        _, text = draw_distractor(rng, pron, used, [i])
        used |= set(words(text))
        distractors.append(text)
    cut = rng.randint(0, len(distractors))  # distractors before / after the paragraph break
    first = [capitalise(rng.choice(OPENERS["event"]) + f"my {rel} {name} {event}.")] + distractors[:cut]
    second = distractors[cut:]
    if rng.random() < complication_prob:
        comp = rng.choice(OPENERS["complication"]) + fill(rng.choice(COMPLICATIONS)[0], pron, {})
        second.insert(rng.randint(0, len(second)), capitalise(comp) + ".")
    rng.shuffle(first)
    second.append(fill(rng.choice(ASKS)[0], pron, {}))
    title = fill(rng.choice(TITLES), {}, {"rel": rel, "event": event})
    post = " ".join(first) + ("\n\n" + " ".join(second))
    return tldr_prompt(post, title, subreddit)
