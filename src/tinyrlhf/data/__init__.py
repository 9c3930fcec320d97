"""Data: the project's record types and JSONL files (records.py), loaders for public formats (formats.py,
public.py), datasets by hub name or directory read through them (hub.py), tokenised batches (collate.py) and
padding-free packed batches (packing.py).

May import: errors only (tests/test_layout.py checks it)."""
from .formats import (FORMATS, PUBLIC_FORMATS, TABLE_FORMATS, detect_format, load_binary, load_preferences,
                      load_prompts, load_rankings, load_sft, parse_hh_turns, split_hh, tldr_prompt)
from .hub import DatasetRows, open_dataset
from .records import (RECORD_TYPES, BinaryRecord, PairRecord, PromptRecord, RankingRecord, SFTRecord, SkipCounter,
                      iter_jsonl, pair_to_binary, pair_to_sft, pairs_from, ranking_to_pairs, read_records,
                      record_from_dict, record_to_dict, render_chat, render_plain, write_records)

__all__ = [
    "SFTRecord", "PairRecord", "RankingRecord", "BinaryRecord", "PromptRecord", "RECORD_TYPES",
    "record_from_dict", "record_to_dict", "read_records", "write_records", "iter_jsonl", "SkipCounter",
    "ranking_to_pairs", "pairs_from", "pair_to_binary", "pair_to_sft", "render_chat", "render_plain",
    "load_preferences", "load_sft", "load_binary", "load_rankings", "load_prompts", "detect_format",
    "FORMATS", "PUBLIC_FORMATS", "TABLE_FORMATS", "split_hh", "parse_hh_turns", "tldr_prompt",
    "open_dataset", "DatasetRows",
]
