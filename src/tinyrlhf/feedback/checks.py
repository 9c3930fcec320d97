"""What the store accepts: items to queue and answers to store, checked with messages that name the field
(the app answers them as 4xx), and which items of a batch two people label."""
from __future__ import annotations

import json

from ..errors import TinyRLHFError

KINDS = {"pair": (2, 2), "ranking": (3, 64), "binary": (1, 1)}  # kind -> (min, max) outputs per item
PAIR_CHOICES = ("A", "B", "tie", "both_bad")  # InstructGPT / Anthropic HH: a preference, a tie, or both bad
BINARY_CHOICES = ("up", "down")
MAX_COMMENT = 2000  # characters
MAX_TEXT = 100_000  # characters per prompt or output
ARENA = "arena"  # the batch of arena items (each a labeller's own prompt and vote)


class StoreError(TinyRLHFError):
    """A request the store refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def doubled(index: int, share: float) -> bool:
    """Whether the index-th item of a batch is one of the doubly-labelled share: exactly round(n * share)
    of any n consecutive items from 0, spread evenly (a Bresenham step, no randomness to explain)."""
    return int((index + 1) * share + 1e-9) > int(index * share + 1e-9)


INT64 = (-2**63, 2**63 - 1)  # what an SQLite INTEGER holds


def valid_text(value) -> bool:
    """A str that UTF-8 can encode (no lone surrogate such as the JSON escape \\ud800 gives)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_items(items: list, where: str = "items") -> None:
    """StoreError naming the item and field unless every item is {"prompt", "kind", "outputs": [{"model",
    "text"}, ...]} with the number of outputs its kind takes."""
    if not isinstance(items, list):
        raise StoreError(f"{where}: expected a list of items")
    for i, it in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(it, dict):
            raise StoreError(f"{at}: expected an object")
        if not isinstance(it.get("prompt"), str) or len(it["prompt"]) > MAX_TEXT:
            raise StoreError(f"{at}: field 'prompt': expected a string of at most {MAX_TEXT} characters")
        if not valid_text(it["prompt"]):
            raise StoreError(f"{at}: field 'prompt': invalid Unicode (a lone surrogate)")
        kind = it.get("kind")
        if kind not in KINDS:
            raise StoreError(f"{at}: field 'kind': expected one of {', '.join(KINDS)}, got {kind!r}")
        outs = it.get("outputs")
        lo, hi = KINDS[kind]
        if not isinstance(outs, list) or not lo <= len(outs) <= hi:
            n = len(outs) if isinstance(outs, list) else "no list of"
            raise StoreError(f"{at}: field 'outputs': a {kind} item takes {lo}" + (f" to {hi}" if hi > lo else "")
                             + f" outputs, got {n}")
        who = it.get("labellers")
        if who is not None and (not isinstance(who, list) or not who or len(set(who)) != len(who)
                                or not all(isinstance(w, str) for w in who)):
            raise StoreError(f"{at}: field 'labellers': expected a non-empty list of distinct names")
        for j, o in enumerate(outs):
            if not (isinstance(o, dict) and isinstance(o.get("model"), str) and isinstance(o.get("text"), str)):
                raise StoreError(f"{at}: field 'outputs[{j}]': expected {{\"model\": str, \"text\": str}}")
            if len(o["text"]) > MAX_TEXT:
                raise StoreError(f"{at}: field 'outputs[{j}].text': longer than {MAX_TEXT} characters")
            if not (valid_text(o["text"]) and valid_text(o["model"])):
                raise StoreError(f"{at}: field 'outputs[{j}]': invalid Unicode (a lone surrogate)")


def check_answer(kind: str, answer: dict, n_outputs: int) -> dict:
    """The canonical answer for an item of `kind`, or StoreError naming the bad field: an unknown choice,
    or a field the kind does not take, is refused, never stored nor scored. Positions are shown positions
    (0 = A, the first shown); the store maps them to output indices through the shown order.
      pair     {"choice": "A"|"B"|"tie"|"both_bad"}
      ranking  {"ranking": [positions, best first]} (a permutation of 0..K-1)
      binary   {"choice": "up"|"down"}"""
    if not isinstance(answer, dict):
        raise StoreError("expected an answer object")
    if kind in ("pair", "binary"):
        choices = PAIR_CHOICES if kind == "pair" else BINARY_CHOICES
        if answer.get("choice") not in choices:
            raise StoreError(f"field 'choice': expected one of {', '.join(choices)}, got "
                             f"{shown(answer.get('choice'))}")
        field = "choice"
    elif kind == "ranking":
        ranking = answer.get("ranking")
        if (not isinstance(ranking, list) or not all(type(p) is int for p in ranking)
                or sorted(ranking) != list(range(n_outputs))):
            raise StoreError(f"field 'ranking': expected the {n_outputs} shown positions 0..{n_outputs - 1} best "
                             f"first, each once, got {shown(ranking)}")
        field = "ranking"
    else:
        raise StoreError(f"field 'kind': expected one of {', '.join(KINDS)}, got {shown(kind)}")
    extra = sorted(set(answer) - {field})
    if extra:
        raise StoreError(f"field '{extra[0]}': a {kind} item is answered with '{field}' only")
    return {field: answer[field]}


def shown(value) -> str:
    """A value in a message: JSON, cut at 80 characters."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_names(names: list) -> None:
    """StoreError unless every labeller name is 1-64 letters, digits, '-', '_' or '.'."""
    for n in names:
        if (not isinstance(n, str) or not n or len(n) > 64
                or not all(c.isalnum() or c in "-_." for c in n)):
            raise StoreError(f"labeller name {n!r}: use 1-64 letters, digits, '-', '_' or '.'")


def check_label_row(row: dict, path: str) -> dict:
    """A labels row as the store wrote it, its JSON fields parsed; a row that is not (malformed JSON, an
    answer that is none, a shown order that is no permutation) is a StoreError naming the file and the row."""
    where = f"{path}: labels row {row.get('id')}"
    for key in ("outputs", "shown_order", "answer"):
        try:
            row[key] = json.loads(row[key])
        except (TypeError, ValueError, RecursionError):
            raise StoreError(f"{where}: field '{key}' is not valid JSON; the store never writes that (was the "
                             "file edited?): export another --batch, or repair or delete that row", 500) from None
    outs, order = row["outputs"], row["shown_order"]
    try:
        if row.get("kind") not in KINDS:
            raise StoreError(f"field 'kind': {shown(row.get('kind'))} is none of {', '.join(KINDS)}")
        check_items([{"prompt": row.get("prompt"), "kind": row["kind"], "outputs": outs}], "row")
        if not isinstance(order, list) or sorted(order) != list(range(len(outs))) \
                or not all(type(i) is int for i in order):
            raise StoreError(f"field 'shown_order': {shown(order)} is not a permutation of the outputs")
        if check_answer(row["kind"], row["answer"], len(outs)) != row["answer"]:
            raise StoreError(f"field 'answer': {shown(row['answer'])} is not a {row['kind']} answer")
    except StoreError as e:
        raise StoreError(f"{where}: {str(e).removeprefix('row[0]: ')}; the store never writes that (was the file "
                         "edited?): export another --batch, or repair or delete that row", 500) from None
    return row
