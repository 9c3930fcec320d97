"""Row parsers of the public formats (see formats.py, which reads the files and picks a parser):
hh-rlhf, summarize-from-feedback, stack-exchange-paired and TL;DR."""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from ..errors import DataError
from .records import PairRecord, SFTRecord

HH_ASSISTANT = "\n\nAssistant:"

Parser = Callable[[dict, dict], Any]  # (row, where) -> one record


# ---------------------------------------------------------------- field helpers

def _text(obj: dict, key: str, where: dict, label: str | None = None, optional: bool = False) -> str | None:
    """obj[key] as a non-blank string (None when optional and absent); errors name `label` (default: key)."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=label or key, **where)
    if value is None or not value.strip():
        if optional:
            return None
        what = "is empty" if value is not None else "missing" if key not in obj else "is null"
        raise DataError(what, field=label or key, **where)
    return value


def _lead_space(text: str) -> str:
    """Completions start with whitespace so that prompt + completion reads (and tokenizes) naturally."""
    return text if text[:1].isspace() else " " + text


def _pair(prompt: str, chosen: str, rejected: str, where: dict, rejected_field: str, meta: dict) -> PairRecord:
    if chosen == rejected:
        raise DataError("chosen is identical to rejected", field=rejected_field, **where)
    return PairRecord(prompt, chosen, rejected, None, {k: v for k, v in meta.items() if v is not None})


def tldr_prompt(post: str, title: str | None = None, subreddit: str | None = None) -> str:
    """The TL;DR prompt of Stiennon et al. (2020): optional SUBREDDIT and TITLE lines, the post, then 'TL;DR:'."""
    head = f"SUBREDDIT: r/{subreddit.strip()}\n" if subreddit else ""
    head += f"TITLE: {title.strip()}\n" if title else ""
    return f"{head}POST: {post.strip()}\nTL;DR:"


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen, rejected) cut after the last '\\n\\nAssistant:' that both transcripts share; None if none."""
    end = len(chosen)
    while (i := chosen.rfind(HH_ASSISTANT, 0, end)) != -1:
        cut = i + len(HH_ASSISTANT)
        if rejected.startswith(chosen[:cut]):
            return chosen[:cut], chosen[cut:], rejected[cut:]
        end = i
    return None


def parse_hh_turns(prompt: str) -> list[dict] | None:
    """The turns of an hh-rlhf prompt ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:") as chat
    messages, the final empty Assistant turn left out; None if it does not have that shape."""
    parts = re.split(r"\n\n(Human|Assistant):", prompt)
    if parts[0].strip() or len(parts) < 3 or parts[-2] != "Assistant" or parts[-1].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 2, 2)]


# ---------------------------------------------------------------- public formats

def _hh(obj: dict, where: dict) -> PairRecord:
    chosen, rejected = _text(obj, "chosen", where), _text(obj, "rejected", where)
    if HH_ASSISTANT not in chosen:
        raise DataError(f"has no {HH_ASSISTANT!r} turn", field="chosen", **where)
    split = split_hh(chosen, rejected)
    if split is None:
        raise DataError(f"shares no {HH_ASSISTANT!r} turn with chosen", field="rejected", **where)
    prompt, chosen, rejected = split
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise DataError("has no reply after the last shared Assistant turn", field=name, **where)
    turns = parse_hh_turns(prompt)  # kept for a tokenizer's chat template (records.render_chat)
    return _pair(prompt, chosen, rejected, where, "rejected", {"source": "hh-rlhf", "messages": turns})


def _summarize(obj: dict, where: dict) -> PairRecord:
    info = obj.get("info")
    if not isinstance(info, dict):
        what = "missing" if info is None else f"expected an object, got {type(info).__name__}"
        raise DataError(what, field="info", **where)
    if info.get("post") is None and info.get("article") is not None:  # CNN/DM comparisons carry an article
        post = _text(info, "article", where, label="info.article")
    else:
        post = _text(info, "post", where, label="info.post")
    title = _text(info, "title", where, label="info.title", optional=True)
    subreddit = _text(info, "subreddit", where, label="info.subreddit", optional=True)
    summaries = obj.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        what = "missing" if summaries is None else "expected a list of 2 summaries"
        raise DataError(what, field="summaries", **where)
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise DataError(f"expected an object, got {type(s).__name__}", field=f"summaries[{i}]", **where)
        texts.append(_lead_space(_text(s, "text", where, label=f"summaries[{i}].text")))
    choice = obj.get("choice")
    if type(choice) is not int or choice not in (0, 1):
        raise DataError("missing" if "choice" not in obj else f"expected 0 or 1, got {json.dumps(choice)}",
                        field="choice", **where)
    meta = {"source": "summarize-from-feedback", "id": info.get("id"), "worker": obj.get("worker"),
            "batch": obj.get("batch"), "split": obj.get("split")}
    return _pair(tldr_prompt(post, title, subreddit), texts[choice], texts[1 - choice], where,
                 f"summaries[{1 - choice}].text", meta)


def _stack_exchange(obj: dict, where: dict) -> PairRecord:
    question = _text(obj, "question", where)
    chosen, rejected = _text(obj, "response_j", where), _text(obj, "response_k", where)
    return _pair(f"Question: {question}\n\nAnswer:", _lead_space(chosen), _lead_space(rejected), where,
                 "response_k", {"source": "stack-exchange-paired", "qid": obj.get("qid")})


def _tldr(obj: dict, where: dict) -> SFTRecord:
    summary = _text(obj, "summary", where)
    title = _text(obj, "title", where, optional=True)
    subreddit = _text(obj, "subreddit", where, optional=True)
    if "post" in obj or "prompt" not in obj:
        prompt = tldr_prompt(_text(obj, "post", where), title, subreddit)
    else:  # a "prompt" is used as given (often already templated) unless there is a title/subreddit to add
        prompt = _text(obj, "prompt", where)
        if title or subreddit:
            prompt = tldr_prompt(prompt, title, subreddit)
    return SFTRecord(prompt, _lead_space(summary), {"source": "tldr"})


PUBLIC_PARSERS: dict[str, tuple[str, Parser]] = {  # format -> (record kind it yields, row parser)
    "hh-rlhf": ("pair", _hh),
    "summarize-from-feedback": ("pair", _summarize),
    "stack-exchange-paired": ("pair", _stack_exchange),
    "tldr": ("sft", _tldr),
}
