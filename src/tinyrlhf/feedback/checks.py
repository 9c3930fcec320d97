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


class StoreError(TinyRLHFError):
    """A request the store refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def doubled(index: int, share: float) -> bool:
    """Whether the index-th item of a batch is one of the doubly-labelled share: exactly round(n * share)
    of any n consecutive items from 0, spread evenly (a Bresenham step, no randomness to explain)."""
    return int((index + 1) * share + 1e-9) > int(index * share + 1e-9)


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


def check_answer(kind: str, answer: dict, n_outputs: int) -> dict:
    """The canonical answer for an item of `kind`, or StoreError naming the bad field. Positions are shown
    positions (0 = A, the first shown); the store maps them to output indices through the shown order.
      pair     {"choice": "A"|"B"|"tie"|"both_bad"}
      ranking  {"ranking": [positions, best first]} (a permutation of 0..K-1)
      binary   {"choice": "up"|"down"}"""
    if kind == "pair":
        if answer.get("choice") not in PAIR_CHOICES:
            raise StoreError(f"field 'choice': expected one of {', '.join(PAIR_CHOICES)}, got "
                             f"{json.dumps(answer.get('choice'))}")
        return {"choice": answer["choice"]}
    if kind == "binary":
        if answer.get("choice") not in BINARY_CHOICES:
            raise StoreError(f"field 'choice': expected one of {', '.join(BINARY_CHOICES)}, got "
                             f"{json.dumps(answer.get('choice'))}")
        return {"choice": answer["choice"]}
    ranking = answer.get("ranking")
    if (not isinstance(ranking, list) or not all(type(p) is int for p in ranking)
            or sorted(ranking) != list(range(n_outputs))):
        raise StoreError(f"field 'ranking': expected the {n_outputs} shown positions 0..{n_outputs - 1} best "
                         f"first, each once, got {json.dumps(ranking)}")
    return {"ranking": ranking}
