"""Loaders for public preference and demonstration formats, from local files, or from the rows of a dataset
(hub.py: a Hugging Face hub name or a local dataset directory, `data.dataset`) read the same way.

  hh-rlhf                  Anthropic HH (Bai et al. 2022, github.com/anthropics/hh-rlhf): {"chosen", "rejected"}
                           full transcripts of "\n\nHuman: ..." / "\n\nAssistant: ..." turns.
  summarize-from-feedback  OpenAI comparisons (Stiennon et al. 2020, github.com/openai/summarize-from-feedback):
                           {"info": {"post"|"article", "title"?, "subreddit"?}, "summaries": [{"text"}, {"text"}],
                           "choice": 0|1}; JSON lines even in the `.json` batch files.  tldr: the same paper's Reddit
                           demonstrations {"post"|"prompt", "summary", "title"?, "subreddit"?}.
  stack-exchange-paired    StackLLaMA's pairs (Hugging Face 2023): {"question", "response_j" (preferred), "response_k"}.
  jsonl, json, csv, parquet  the project's records (records.py), or any table whose columns `columns=` maps to ours,
                           e.g. {"prompt": "instruction", "chosen": "good", "rejected": "bad"}.
Error positions are lines for JSONL and CSV, 1-based record positions for a JSON array and parquet, and
"dataset NAME, split S, row I" (0-based, as `dataset[I]`) for a dataset.
Chat rows (OpenAI-style `messages`, or prompts/completions given as message lists) are read as records.py
describes; hh-rlhf prompts keep their turns in meta["messages"] too, for `records.render_chat`.
`load_prompts` reads the prompts of any of these files (evaluation on your own data).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from typing import Any, Callable, Iterator

from ..errors import DataError
from .hub import DatasetRows
from .public import (PUBLIC_PARSERS, HH_ASSISTANT, Parser, parse_hh_turns, split_hh,  # noqa: F401 (re-exported)
                     tldr_prompt)
from .records import (BinaryRecord, PairRecord, PromptRecord, RankingRecord, SFTRecord, SkipCounter, pair_to_binary,
                      pair_to_sft, parse_jsonl_lines, ranking_to_pairs, record_from_dict)

PUBLIC_FORMATS = ("hh-rlhf", "summarize-from-feedback", "stack-exchange-paired", "tldr")
TABLE_FORMATS = ("jsonl", "json", "csv", "parquet")
FORMATS = ("auto",) + PUBLIC_FORMATS + TABLE_FORMATS
KIND_FIELDS = {  # the project's record kinds and their required fields, in detection order
    "pair": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "completions"),
    "binary": ("prompt", "completion", "label"),
    "sft": ("prompt", "completion"),
    "prompt": ("prompt",),
}
COLUMN_FIELDS = ("prompt", "chosen", "rejected", "margin", "completions", "completion", "label", "meta")


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


# ---------------------------------------------------------------- detection

def detect_format(obj: Any) -> str | None:
    """Name a row's format from its keys: a public format or a record kind (pair, ranking, binary, sft)."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("messages"), list) and "prompt" not in obj:  # chat: a conversation
        last = obj["messages"][-1] if obj["messages"] else None
        return "sft" if isinstance(last, dict) and last.get("role") == "assistant" else "prompt"
    if "prompt" not in obj and isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list):
        return "pair"  # chat: two whole conversations that differ in the last reply
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

def parse_columns(text: str, what: str = "columns") -> dict | None:
    """'prompt=question,completion=answer' (a command's --columns) -> {"prompt": "question", ...}; None when
    empty. Fields are checked where the mapping is used (COLUMN_FIELDS)."""
    if not text.strip():
        return None
    out = {}
    for item in text.split(","):
        field, sep, key = (x.strip() for x in item.partition("="))
        if not sep or not field or not key:
            raise DataError(f"{what} {text!r}: expected FIELD=KEY[,FIELD=KEY...], e.g. prompt=question")
        out[field] = key
    return out


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
    if fmt in PUBLIC_PARSERS:
        return PUBLIC_PARSERS[fmt]
    row = _map_columns(obj, columns, where)
    if target != "prompt" and all(f in row for f in KIND_FIELDS[target]):  # prompts: the richest kind wins
        kind = target
    elif fmt == "auto" and not columns:
        kind = detect_format(row)
        if kind is None:
            raise DataError(f"cannot detect the format from the keys {sorted(row)}; name your columns (a command: "
                            "data.columns.prompt=KEY data.columns.completion=KEY, or chosen=/rejected=/label=; "
                            "Python: columns=) or the format (data.format= / format=: one of "
                            f"{', '.join(FORMATS[1:])})", **where)
        if kind in PUBLIC_PARSERS:
            return PUBLIC_PARSERS[kind]
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
    "prompt": {"prompt": lambda r: [r], "sft": lambda r: [PromptRecord(r.prompt, r.completion, dict(r.meta))],
               "pair": lambda r: [PromptRecord(r.prompt, r.chosen, dict(r.meta))],
               "ranking": lambda r: [PromptRecord(r.prompt, r.completions[0], dict(r.meta))],
               "binary": lambda r: [PromptRecord(r.prompt, r.completion if r.label else None, dict(r.meta))]},
}


def _source_rows(source, fmt: str) -> tuple[str, Iterator[tuple[int, Any]], Callable[[int], dict]]:
    """(table kind, rows, position -> error location) of a file path or of a dataset's DatasetRows."""
    if isinstance(source, DatasetRows):  # a dataset's rows: errors name "dataset NAME, split S, row I"
        return "dataset", iter(source), lambda i: {"path": f"{source.label}, row {i}", "line": None}
    path = os.fspath(source)
    table = _table_kind(path, fmt)
    return table, _rows(path, table), lambda line: {"path": path, "line": line}


def _load(source: str | os.PathLike | DatasetRows, fmt: str, target: str, columns: dict | None, skip_bad: bool,
          skipped: SkipCounter | None, max_records: int | None) -> list:
    label = source.label if isinstance(source, DatasetRows) else os.fspath(source)
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}' (valid: {', '.join(FORMATS)})", path=label)
    if columns is not None:
        if fmt in PUBLIC_PARSERS:
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
    table, rows, where_of = _source_rows(source, fmt)
    kind: str | None = None
    parse: Parser | None = None
    out: list = []
    for position, obj in rows:
        where = where_of(position)
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
                        f"{', '.join(_CONVERT[target])})", path=label)
    if not out:
        why = ("the file is empty" if table != "dataset" else "the split is empty") + \
            (" or every record was bad" if skip_bad else "")
        raise DataError(f"no records ({why})" + (f"; first error: {first_error}" if first_error else ""),
                        path=label)
    return out[:max_records] if max_records is not None else out


def load_preferences(path: str | os.PathLike | DatasetRows, format: str = "auto", *, columns: dict | None = None,
                     skip_bad: bool = False, skipped: SkipCounter | None = None,
                     max_records: int | None = None) -> list[PairRecord]:
    """Preference pairs from a local file in any of FORMATS, or a dataset's rows (hub.open_dataset; so for
    every loader here); rankings expand to all their pairs."""
    return _load(path, format, "pair", columns, skip_bad, skipped, max_records)


def load_sft(path: str | os.PathLike | DatasetRows, format: str = "auto", *, columns: dict | None = None,
             skip_bad: bool = False, skipped: SkipCounter | None = None,
             max_records: int | None = None) -> list[SFTRecord]:
    """Demonstrations: SFT records, TL;DR (post, summary), or the chosen side of preference data."""
    return _load(path, format, "sft", columns, skip_bad, skipped, max_records)


def load_binary(path: str | os.PathLike | DatasetRows, format: str = "auto", *, columns: dict | None = None,
                skip_bad: bool = False, skipped: SkipCounter | None = None,
                max_records: int | None = None) -> list[BinaryRecord]:
    """Unpaired feedback: binary records, or pairs split into a desirable and an undesirable one (KTO)."""
    return _load(path, format, "binary", columns, skip_bad, skipped, max_records)


def load_rankings(path: str | os.PathLike | DatasetRows, format: str = "auto", *, columns: dict | None = None,
                  skip_bad: bool = False, skipped: SkipCounter | None = None,
                  max_records: int | None = None) -> list[RankingRecord]:
    """Best-first rankings: ranking records, or preference pairs as rankings of two."""
    return _load(path, format, "ranking", columns, skip_bad, skipped, max_records)


def load_prompts(path: str | os.PathLike | DatasetRows, format: str = "auto", *, columns: dict | None = None,
                 skip_bad: bool = False, skipped: SkipCounter | None = None,
                 max_records: int | None = None, counts: dict | None = None) -> list[PromptRecord]:
    """The distinct prompts of any file above (first occurrence kept, file order), each with a reference
    answer when the file has one: an sft completion, the chosen side of a pair, the best of a ranking,
    a desirable binary completion, or a chat's last assistant turn. A file of bare {"prompt": ...}
    objects (or a CSV with a prompt column) has none. `counts`, when given, receives how many prompts the
    file holds (`read`), how many repeat an earlier one (`duplicates`) and how many were kept (`kept`)."""
    seen: set[str] = set()
    records = _load(path, format, "prompt", columns, skip_bad, skipped, None)
    unique = [r for r in records if not (r.prompt in seen or seen.add(r.prompt))]  # first occurrence, file order
    kept = unique[:max_records] if max_records is not None else unique
    if counts is not None:
        counts.update(read=len(records), duplicates=len(records) - len(unique), kept=len(kept))
    return kept
