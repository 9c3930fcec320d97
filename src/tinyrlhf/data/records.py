"""Record types of the project's JSONL formats, their validation and the conversions between them.

One JSON object per line. Fields:
  sft      {"prompt": str, "completion": str}
  pair     {"prompt": str, "chosen": str, "rejected": str, "margin"?: float}
  ranking  {"prompt": str, "completions": [str, ...]}        (best first, K >= 2)
  binary   {"prompt": str, "completion": str, "label": bool}  (true = desirable)
  prompt   {"prompt": str}                                     (evaluation prompts; see formats.load_prompts)
Every record may carry "meta": {...} (free-form, kept as is: annotator id, gold rewards, source).

Chat data. A prompt may be a list of OpenAI-style messages ({"role": "system"|"user"|"assistant",
"content": str}); an sft record may be {"messages": [...]} whose last turn is the assistant's reply (its
earlier assistant turns stay in the prompt, where SFT gives them loss too: conversation.py);
completions (chosen, rejected, completion) may be such lists too, of which the last assistant turn
counts; a pair may give whole conversations as chosen and rejected, and its prompt is then the turns
before their replies (a text prompt beside them, as in HuggingFaceH4/ultrafeedback_binarized, repeats
them). Such a record is first rendered with ONE plain template, the one hh-rlhf uses:
"\n\nHuman: {user}" for each user turn, "\n\nAssistant: {reply}" for each assistant turn,
"\n\nSystem: {text}" for a system turn, the prompt ending in "\n\nAssistant:" and the completion
being " " + the reply. Its prompt turns are kept in meta["messages"]; `render_chat` re-renders them with
a tokenizer's chat template when it has one (hh-rlhf transcripts too: formats.py parses their turns).
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

from ..diskio import atomic_write
from ..errors import DataError


@dataclass(frozen=True)
class SFTRecord:
    prompt: str
    completion: str
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PairRecord:
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class RankingRecord:
    prompt: str
    completions: tuple[str, ...]  # best first
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class BinaryRecord:
    prompt: str
    completion: str
    label: bool  # True = desirable
    meta: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    reference: str | None = None  # a reference answer when the file has one (sft completion, chosen)
    meta: dict = field(default_factory=dict, compare=False)


RECORD_TYPES = {"sft": SFTRecord, "pair": PairRecord, "ranking": RankingRecord, "binary": BinaryRecord,
                "prompt": PromptRecord}


# ---------------------------------------------------------------- chat messages

ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}


def render_plain(messages: list[dict]) -> str:
    """The plain chat template (hh-rlhf's): each turn as "\n\n{Human|Assistant|System}: {content}",
    then "\n\nAssistant:" for the reply to come."""
    return "".join(f"\n\n{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


def _messages(value: Any, key: str, where: dict) -> list[dict]:
    """A validated list of {"role", "content"} messages (extra keys dropped)."""
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", field=key, **where)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError("expected {\"role\": ..., \"content\": \"...\"}", field=f"{key}[{i}]", **where)
        if m.get("role") not in ROLE_NAMES:
            raise DataError(f"role {m.get('role')!r} is not one of {', '.join(ROLE_NAMES)}",
                            field=f"{key}[{i}].role", **where)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _reply(value: Any, key: str, where: dict) -> str:
    """A completion given as text, or as messages whose last turn is the assistant's reply."""
    if isinstance(value, list):
        turns = _messages(value, key, where)
        if turns[-1]["role"] != "assistant":
            raise DataError("the last message is not the assistant's reply", field=key, **where)
        value = turns[-1]["content"]
    if not isinstance(value, str):
        return value  # validation below names the field
    return value if value[:1].isspace() else " " + value


def _from_chat(kind: str, obj: dict, where: dict) -> dict:
    """A chat-shaped row (see the module docstring) as plain fields, prompt turns in meta["messages"]."""
    obj = dict(obj)
    if "messages" in obj and "prompt" not in obj:
        turns = _messages(obj.pop("messages"), "messages", where)
        if turns[-1]["role"] == "assistant":  # the reply (for evaluation prompts: a reference answer)
            obj["reference" if kind == "prompt" else "completion"] = turns[-1]["content"]
            turns = turns[:-1]
        obj["prompt"] = turns
    if kind == "pair" and isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list) and (
            "prompt" not in obj or isinstance(obj["prompt"], str) and len(obj["chosen"]) > 1):
        # two whole conversations; a text prompt beside them repeats their user turn (H4's UltraFeedback)
        chosen, rejected = _messages(obj["chosen"], "chosen", where), _messages(obj["rejected"], "rejected", where)
        if chosen[:-1] != rejected[:-1]:
            raise DataError("its turns before the reply differ from chosen's", field="rejected", **where)
        obj["prompt"] = chosen[:-1]
    if isinstance(obj.get("prompt"), list):
        turns = _messages(obj["prompt"], "prompt", where)
        if turns[-1]["role"] == "assistant":
            raise DataError("the last prompt message is the assistant's; the reply goes in the completion",
                            field="prompt", **where)
        obj["prompt"] = render_plain(turns)
        obj["meta"] = {**(obj.get("meta") if isinstance(obj.get("meta"), dict) else {}), "messages": turns}
        for key in ("completion", "chosen", "rejected"):
            if key in obj:
                obj[key] = _reply(obj[key], key, where)
        if isinstance(obj.get("completions"), list):
            obj["completions"] = [_reply(c, "completions", where) for c in obj["completions"]]
    return obj


def _is_chat(obj: dict) -> bool:
    return isinstance(obj.get("prompt"), list) or "messages" in obj or \
        any(isinstance(obj.get(k), list) for k in ("chosen", "rejected", "completion"))


def render_chat(records: list, tokenizer) -> list:
    """Records with chat turns (meta["messages"]) re-rendered with the tokenizer's chat template, when it
    has one; others, and every record for a tokenizer without a template, are returned as they are.
    The prompt ends with the template's generation prompt; each completion is what the template adds
    for the reply (its end-of-turn marker included)."""
    if not getattr(tokenizer, "chat_template", None):
        return records
    import dataclasses

    out = []
    for r in records:
        turns = r.meta.get("messages") if isinstance(r.meta, dict) else None
        if not turns:
            out.append(r)
            continue
        prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

        def reply(text: str) -> str:
            full = tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": text.strip()}],
                                                 tokenize=False)
            return full[len(prompt):] if full.startswith(prompt) else text

        changes = {"prompt": prompt}
        for key in ("completion", "chosen", "rejected"):  # a PromptRecord's reference stays plain text
            if isinstance(getattr(r, key, None), str) and getattr(r, key):
                changes[key] = reply(getattr(r, key))
        if isinstance(r, RankingRecord):
            changes["completions"] = tuple(reply(c) for c in r.completions)
        out.append(dataclasses.replace(r, **changes))
    return out


# ---------------------------------------------------------------- validation

def _req_str(obj: dict, key: str, where: dict, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DataError("missing", field=key, **where)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=key, **where)
    if not allow_empty and not value.strip():
        raise DataError("is empty", field=key, **where)
    return value


def _meta(obj: dict, where: dict) -> dict:
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise DataError(f"expected an object, got {type(meta).__name__}", field="meta", **where)
    return meta


def record_from_dict(kind: str, obj: Any, *, path: str | None = None, line: int | None = None):
    """Build and validate one record of `kind` from a parsed JSON object."""
    where = {"path": path, "line": line}
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", **where)
    if _is_chat(obj):
        obj = _from_chat(kind, obj, where)
    if kind == "prompt":
        reference = obj.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"expected a string, got {type(reference).__name__}", field="reference", **where)
        return PromptRecord(_req_str(obj, "prompt", where), reference, _meta(obj, where))
    if kind == "sft":
        return SFTRecord(_req_str(obj, "prompt", where, allow_empty=True),
                         _req_str(obj, "completion", where), _meta(obj, where))
    if kind == "pair":
        prompt = _req_str(obj, "prompt", where, allow_empty=True)
        chosen, rejected = _req_str(obj, "chosen", where), _req_str(obj, "rejected", where)
        if chosen == rejected:
            raise DataError("chosen is identical to rejected", field="rejected", **where)
        margin = obj.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise DataError(f"expected a number, got {type(margin).__name__}", field="margin", **where)
        return PairRecord(prompt, chosen, rejected, None if margin is None else float(margin),
                          _meta(obj, where))
    if kind == "ranking":
        prompt = _req_str(obj, "prompt", where, allow_empty=True)
        comps = obj.get("completions")
        if comps is None:
            raise DataError("missing", field="completions", **where)
        if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
            raise DataError("expected a list of strings", field="completions", **where)
        if len(comps) < 2:
            raise DataError(f"needs at least 2 completions, got {len(comps)}", field="completions", **where)
        if len(set(comps)) != len(comps):
            raise DataError("has duplicate completions", field="completions", **where)
        if any(not c.strip() for c in comps):
            raise DataError("has an empty completion", field="completions", **where)
        return RankingRecord(prompt, tuple(comps), _meta(obj, where))
    if kind == "binary":
        prompt = _req_str(obj, "prompt", where, allow_empty=True)
        completion = _req_str(obj, "completion", where)
        if "label" not in obj:
            raise DataError("missing", field="label", **where)
        label = obj["label"]
        if not isinstance(label, bool):
            raise DataError(f"expected true or false, got {json.dumps(label)}", field="label", **where)
        return BinaryRecord(prompt, completion, label, _meta(obj, where))
    raise DataError(f"unknown record kind '{kind}' (valid: {', '.join(RECORD_TYPES)})")


def record_to_dict(record) -> dict:
    d = asdict(record)
    if isinstance(record, RankingRecord):
        d["completions"] = list(record.completions)
    if isinstance(record, PairRecord) and record.margin is None:
        del d["margin"]
    if isinstance(record, PromptRecord) and record.reference is None:
        del d["reference"]
    if not d.get("meta"):
        d.pop("meta", None)
    return d


# ---------------------------------------------------------------- JSONL I/O

class SkipCounter:
    """Collects records skipped with `skip_bad=True`: how many and the first messages."""

    def __init__(self):
        self.count = 0
        self.messages: list[str] = []

    def add(self, err: DataError):
        self.count += 1
        if len(self.messages) < 5:
            self.messages.append(str(err))


def check_data_file(path: str, key: str):
    """DataError naming the config key unless `path` is a readable file (not missing, not a directory)."""
    if os.path.isdir(path):
        raise DataError(f"{key} is a directory; pass a file", path=path)
    if not os.path.isfile(path):
        raise DataError(f"{key}: no such file", path=path)
    if not os.access(path, os.R_OK):
        raise DataError(f"{key}: not readable (permissions)", path=path)


def parse_jsonl_lines(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed object or that line's DataError) for each non-blank line.

    Errors are yielded, not raised, so a caller can skip a bad line and go on. `.gz` is read transparently.
    """
    if os.path.isdir(path):
        raise DataError("is a directory; pass a file", path=path)
    if not os.path.isfile(path):
        raise DataError("no such file", path=path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:  # utf-8-sig on line 1: a byte-order mark (Windows editors) is not part of the JSON
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield n, DataError(f"not UTF-8 text (byte {e.start + 1} of the line)", path=path, line=n)
                    continue
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, DataError(f"not valid JSON ({e.msg} at column {e.colno})", path=path, line=n)
    except (OSError, EOFError) as e:  # unreadable, or a truncated / non-gzip .gz
        raise DataError(f"cannot read ({e})", path=path) from None


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed object) for each non-blank line; DataError on bad JSON."""
    for n, obj in parse_jsonl_lines(path):
        if isinstance(obj, DataError):
            raise obj
        yield n, obj


def read_records(path: str, kind: str, *, skip_bad: bool = False,
                 skipped: SkipCounter | None = None) -> list:
    """Read a JSONL file of `kind` records. Bad lines raise DataError (or are counted with skip_bad)."""
    out = []
    for n, obj in parse_jsonl_lines(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            out.append(record_from_dict(kind, obj, path=path, line=n))
        except DataError as e:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped.add(e)
    if not out:
        raise DataError("no records (the file is empty" + (" or every line was bad)" if skip_bad else ")"),
                        path=path)
    return out


def write_records(path: str, records: Iterable) -> int:
    """Write records as JSONL atomically (temp file, fsync, rename), so a crash never leaves half a file;
    a full or read-only disk is a DiskError naming the file, with the temporary file removed."""
    n = 0

    def write(f):
        nonlocal n
        for r in records:
            f.write(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n")
            n += 1
    atomic_write(path, write)
    return n


# ---------------------------------------------------------------- conversions

def ranking_to_pairs(record: RankingRecord) -> list[PairRecord]:
    """All K·(K−1)/2 ordered pairs of a best-first ranking (InstructGPT's expansion)."""
    return [PairRecord(record.prompt, a, b, None, dict(record.meta))
            for a, b in itertools.combinations(record.completions, 2)]


def pairs_from(records: Iterable) -> list[PairRecord]:
    """Pairs from a mix of pair and ranking records (rankings expand to all their pairs)."""
    out: list[PairRecord] = []
    for r in records:
        if isinstance(r, RankingRecord):
            out.extend(ranking_to_pairs(r))
        elif isinstance(r, PairRecord):
            out.append(r)
        else:
            raise DataError(f"cannot make preference pairs from a {type(r).__name__}")
    return out


def pair_to_binary(record: PairRecord) -> list[BinaryRecord]:
    """Unpaired feedback from a pair: chosen is desirable, rejected undesirable (KTO paper, §4)."""
    return [BinaryRecord(record.prompt, record.chosen, True, dict(record.meta)),
            BinaryRecord(record.prompt, record.rejected, False, dict(record.meta))]


def pair_to_sft(record: PairRecord) -> SFTRecord:
    """Demonstration from a pair: the chosen completion."""
    return SFTRecord(record.prompt, record.chosen, dict(record.meta))
