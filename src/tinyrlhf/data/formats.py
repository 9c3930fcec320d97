"""Loaders for public preference and demonstration formats, from local files only (nothing is downloaded).

  hh-rlhf                  Anthropic HH (Bai et al. 2022, github.com/anthropics/hh-rlhf): {"chosen", "rejected"}
                           full transcripts of "\n\nHuman: ..." / "\n\nAssistant: ..." turns.
  summarize-from-feedback  OpenAI comparisons (Stiennon et al. 2020, github.com/openai/summarize-from-feedback):
                           {"info": {"post"|"article", "title"?, "subreddit"?}, "summaries": [{"text"}, {"text"}],
                           "choice": 0|1}; JSON lines even in the `.json` batch files.  tldr: the same paper's Reddit
                           demonstrations {"post"|"prompt", "summary", "title"?, "subreddit"?}.
  stack-exchange-paired    StackLLaMA's pairs (Hugging Face 2023): {"question", "response_j" (preferred), "response_k"}.
  jsonl, json, csv, parquet  the project's records (records.py), or any table whose columns `columns=` maps to ours,
                           e.g. {"prompt": "instruction", "chosen": "good", "rejected": "bad"}.
Error positions are lines for JSONL and CSV, and 1-based record positions for a JSON array and parquet.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from typing import Any, Callable, Iterator

from ..errors import DataError
from .records import (BinaryRecord, PairRecord, RankingRecord, SFTRecord, SkipCounter, pair_to_binary,
                      pair_to_sft, parse_jsonl_lines, ranking_to_pairs, record_from_dict)

PUBLIC_FORMATS = ("hh-rlhf", "summarize-from-feedback", "stack-exchange-paired", "tldr")
TABLE_FORMATS = ("jsonl", "json", "csv", "parquet")
FORMATS = ("auto",) + PUBLIC_FORMATS + TABLE_FORMATS
KIND_FIELDS = {  # the project's record kinds and their required fields, in detection order
    "pair": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "completions"),
    "binary": ("prompt", "completion", "label"),
    "sft": ("prompt", "completion"),
}
COLUMN_FIELDS = ("prompt", "chosen", "rejected", "margin", "completions", "completion", "label", "meta")
HH_ASSISTANT = "\n\nAssistant:"

Parser = Callable[[dict, dict], Any]  # (row, where) -> one record


# ---------------------------------------------------------------- reading rows

def _table_kind(path: str, fmt: str) -> str:
    """Which reader: an explicit json/csv/parquet wins, else the extension (.gz ignored), else JSONL."""
    if fmt in ("json", "csv", "parquet"):
        return fmt
    ext = os.path.splitext(path[:-3] if path.endswith(".gz") else path)[1].lower()
    return {".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(ext, "jsonl")


def _read_text(path: str) -> str:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})", path=path) from None


def _json_rows(path: str) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line under a .json name (OpenAI's comparisons/batch*.json)
            yield from parse_jsonl_lines(path)
            return
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno) from None
    if isinstance(data, dict):
        data = data["data"] if isinstance(data.get("data"), list) else [data]
    if not isinstance(data, list):
        raise DataError('expected a list of objects or {"data": [...]}', path=path)
    yield from enumerate(data, start=1)


def _csv_rows(path: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        if reader.fieldnames is None:  # empty file
            return
        prev = reader.line_num
        for row in reader:  # short rows give None cells, long rows a None key: both treated as absent
            yield prev + 1, {k: v for k, v in row.items() if k is not None and v is not None}
            prev = reader.line_num
    except csv.Error as e:
        raise DataError(f"not valid CSV ({e})", path=path, line=reader.line_num) from None


def _parquet_rows(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa  # imported here so JSONL users never pay for it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable parquet file ({e})", path=path) from None
    yield from enumerate((row for batch in pf.iter_batches(batch_size=1024) for row in batch.to_pylist()), start=1)


def _rows(path: str, table: str) -> Iterator[tuple[int, Any]]:
    """Yield (position, row object or that row's DataError); file-level problems raise."""
    if os.path.isdir(path):
        raise DataError("is a directory; pass a file", path=path)
    if not os.path.isfile(path):
        raise DataError("no such file", path=path)
    readers = {"jsonl": parse_jsonl_lines, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}
    try:
        yield from readers[table](path)
    except (OSError, EOFError) as e:  # e.g. a truncated or non-gzip .gz file
        raise DataError(f"cannot read ({e})", path=path) from None


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
    return _pair(prompt, chosen, rejected, where, "rejected", {"source": "hh-rlhf"})


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


_PUBLIC: dict[str, tuple[str, Parser]] = {  # format -> (record kind it yields, row parser)
    "hh-rlhf": ("pair", _hh),
    "summarize-from-feedback": ("pair", _summarize),
    "stack-exchange-paired": ("pair", _stack_exchange),
    "tldr": ("sft", _tldr),
}


def detect_format(obj: Any) -> str | None:
    """Name a row's format from its keys: a public format or a record kind (pair, ranking, binary, sft)."""
    if not isinstance(obj, dict):
        return None
    if "summaries" in obj and "choice" in obj:
        return "summarize-from-feedback"
    if "response_j" in obj and "response_k" in obj:
        return "stack-exchange-paired"
    if ("chosen" in obj and "rejected" in obj and "prompt" not in obj
            and isinstance(obj["chosen"], str) and "Assistant:" in obj["chosen"]):
        return "hh-rlhf"
    for kind, fields in KIND_FIELDS.items():
        if all(f in obj for f in fields):
            return kind
    if "summary" in obj and ("post" in obj or "prompt" in obj):
        return "tldr"
    return None


# ---------------------------------------------------------------- generic tables

def _map_columns(obj: dict, columns: dict | None, where: dict) -> dict:
    if not columns:
        return obj
    out = dict(obj)
    for ours, theirs in columns.items():
        if theirs not in obj:
            raise DataError(f"missing (mapped to '{ours}')", field=theirs, **where)
        out[ours] = obj[theirs]
    return out


def _csv_cells(obj: dict, where: dict) -> dict:
    """CSV cells are all strings: read margin as a number, label as a boolean, completions/meta as JSON."""
    out = dict(obj)
    if isinstance(out.get("margin"), str):
        cell = out.pop("margin").strip()
        if cell:
            try:
                out["margin"] = float(cell)
            except ValueError:
                raise DataError(f"expected a number, got {cell!r}", field="margin", **where) from None
    label = out.get("label")
    if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
        out["label"] = label.strip().lower() in ("true", "1")
    if out.get("meta") == "":
        del out["meta"]
    for key in ("completions", "meta"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass  # left as a string: validation names the field
    return out


def _renamed(err: DataError, columns: dict | None) -> DataError:
    """Point an error at the user's column when the field came through `columns`."""
    if not columns or err.field not in columns:
        return err
    prefix = str(DataError("", path=err.path, line=err.line, field=err.field))
    return DataError(f"{str(err)[len(prefix):]} (read as '{err.field}')", path=err.path, line=err.line,
                     field=columns[err.field])


def _table_parser(kind: str, columns: dict | None, csv_cells: bool) -> Parser:
    def parse(obj: dict, where: dict):
        row = _map_columns(obj, columns, where)
        try:
            return record_from_dict(kind, _csv_cells(row, where) if csv_cells else row, **where)
        except DataError as e:
            raise _renamed(e, columns) from None
    return parse


def _choose(fmt: str, target: str, obj: dict, columns: dict | None, table: str, where: dict) -> tuple[str, Parser]:
    """(record kind, row parser) for a whole file, decided from its first row."""
    if fmt in _PUBLIC:
        return _PUBLIC[fmt]
    row = _map_columns(obj, columns, where)
    if all(f in row for f in KIND_FIELDS[target]):
        kind = target
    elif fmt == "auto" and not columns:
        kind = detect_format(row)
        if kind is None:
            raise DataError(f"cannot detect the format from the keys {sorted(row)}; pass format= (one of "
                            f"{', '.join(FORMATS[1:])}) or columns=", **where)
        if kind in _PUBLIC:
            return _PUBLIC[kind]
    else:  # a generic table: whichever project kind the row holds, else the target (errors then name fields)
        kind = next((k for k, fs in KIND_FIELDS.items() if all(f in row for f in fs)), target)
    return kind, _table_parser(kind, columns, table == "csv")


# ---------------------------------------------------------------- loading

_CONVERT: dict[str, dict[str, Callable[[Any], list]]] = {  # target kind -> {kind read: to a list of targets}
    "pair": {"pair": lambda r: [r], "ranking": ranking_to_pairs},
    "sft": {"sft": lambda r: [r], "pair": lambda r: [pair_to_sft(r)],
            "ranking": lambda r: [SFTRecord(r.prompt, r.completions[0], dict(r.meta))]},
    "binary": {"binary": lambda r: [r], "pair": pair_to_binary},
    "ranking": {"ranking": lambda r: [r],
                "pair": lambda r: [RankingRecord(r.prompt, (r.chosen, r.rejected), dict(r.meta))]},
}


def _load(path: str | os.PathLike, fmt: str, target: str, columns: dict | None, skip_bad: bool,
          skipped: SkipCounter | None, max_records: int | None) -> list:
    path = os.fspath(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}' (valid: {', '.join(FORMATS)})", path=path)
    if columns is not None:
        if fmt in _PUBLIC:
            raise DataError(f"columns= applies to generic tables ({', '.join(TABLE_FORMATS)}), not to '{fmt}'")
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise DataError("columns= must map field names to column names (strings)")
        unknown = [str(k) for k in columns if k not in COLUMN_FIELDS]
        if unknown:
            raise DataError(f"unknown field(s) in columns=: {', '.join(unknown)} (valid: {', '.join(COLUMN_FIELDS)})")
    if max_records is not None and (type(max_records) is not int or max_records < 1):
        raise DataError(f"max_records must be a positive integer, got {max_records!r}")
    counter = skipped if skipped is not None else SkipCounter()
    first_error: DataError | None = None
    table = _table_kind(path, fmt)
    kind: str | None = None
    parse: Parser | None = None
    out: list = []
    for line, obj in _rows(path, table):
        where = {"path": path, "line": line}
        try:
            if isinstance(obj, DataError):
                raise obj
            if not isinstance(obj, dict):
                raise DataError(f"expected an object, got {type(obj).__name__}", **where)
            if parse is None:
                kind, parse = _choose(fmt, target, obj, columns, table, where)
                if kind not in _CONVERT[target]:
                    break  # the whole file is of the wrong kind: reported below, never skipped
            out.extend(_CONVERT[target][kind](parse(obj, where)))
        except DataError as e:
            if not skip_bad:
                raise
            counter.add(e)
            first_error = first_error or e
        if max_records is not None and len(out) >= max_records:
            break
    if kind is not None and kind not in _CONVERT[target]:
        raise DataError(f"holds {kind} records, which cannot be read as {target} records (readable: "
                        f"{', '.join(_CONVERT[target])})", path=path)
    if not out:
        why = "the file is empty" + (" or every record was bad" if skip_bad else "")
        raise DataError(f"no records ({why})" + (f"; first error: {first_error}" if first_error else ""),
                        path=path)
    return out[:max_records] if max_records is not None else out


def load_preferences(path: str | os.PathLike, format: str = "auto", *, columns: dict | None = None,
                     skip_bad: bool = False, skipped: SkipCounter | None = None,
                     max_records: int | None = None) -> list[PairRecord]:
    """Preference pairs from a local file in any of FORMATS; rankings expand to all their pairs."""
    return _load(path, format, "pair", columns, skip_bad, skipped, max_records)


def load_sft(path: str | os.PathLike, format: str = "auto", *, columns: dict | None = None,
             skip_bad: bool = False, skipped: SkipCounter | None = None,
             max_records: int | None = None) -> list[SFTRecord]:
    """Demonstrations: SFT records, TL;DR (post, summary), or the chosen side of preference data."""
    return _load(path, format, "sft", columns, skip_bad, skipped, max_records)


def load_binary(path: str | os.PathLike, format: str = "auto", *, columns: dict | None = None,
                skip_bad: bool = False, skipped: SkipCounter | None = None,
                max_records: int | None = None) -> list[BinaryRecord]:
    """Unpaired feedback: binary records, or pairs split into a desirable and an undesirable one (KTO)."""
    return _load(path, format, "binary", columns, skip_bad, skipped, max_records)


def load_rankings(path: str | os.PathLike, format: str = "auto", *, columns: dict | None = None,
                  skip_bad: bool = False, skipped: SkipCounter | None = None,
                  max_records: int | None = None) -> list[RankingRecord]:
    """Best-first rankings: ranking records, or preference pairs as rankings of two."""
    return _load(path, format, "ranking", columns, skip_bad, skipped, max_records)
