"""Loaders for public formats: each test writes its own small files in the real shapes of those datasets."""
import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyrlhf.data import (FORMATS, BinaryRecord, PairRecord, RankingRecord, SFTRecord, SkipCounter,
                           detect_format, load_binary, load_preferences, load_rankings, load_sft, split_hh)
from tinyrlhf.errors import DataError


def write_jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return str(path)


def triples(records):
    return [(r.prompt, r.chosen, r.rejected) for r in records]


# ---------------------------------------------------------------- hh-rlhf

HH = [
    {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I don't know."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross?",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: No."},
    # chosen goes on for another turn that rejected lacks: split at the last *shared* Assistant turn
    {"chosen": "\n\nHuman: Help me\n\nAssistant: Sure.\n\nHuman: Thanks\n\nAssistant: Welcome.",
     "rejected": "\n\nHuman: Help me\n\nAssistant: Go away."},
]


def test_hh_rlhf_splits_at_last_shared_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", HH)
    expected = [
        ("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.", " I don't know."),
        ("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:",
         " Why did the chicken cross?", " No."),
        ("\n\nHuman: Help me\n\nAssistant:", " Sure.\n\nHuman: Thanks\n\nAssistant: Welcome.", " Go away."),
    ]
    for fmt in ("hh-rlhf", "auto"):
        records = load_preferences(path, fmt)
        assert triples(records) == expected
        assert records[0].meta == {"source": "hh-rlhf",  # the turns, for a tokenizer's chat template
                                   "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def test_hh_rlhf_gzip_as_published(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(o) + "\n" for o in HH))
    assert triples(load_preferences(path))[1][1] == " Why did the chicken cross?"
    assert len(load_preferences(str(path), max_records=2)) == 2


def test_split_hh_returns_none_without_a_shared_turn():
    assert split_hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: x\n\nAssistant: b") is None
    assert split_hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: c") == (
        "\n\nHuman: a\n\nAssistant:", " b", " c")


def test_hh_rlhf_without_shared_turn_names_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [HH[0], {
        "chosen": "\n\nHuman: One\n\nAssistant: A", "rejected": "\n\nHuman: Two\n\nAssistant: B"}])
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'rejected': shares no '\\n\\nAssistant:' turn"):
        load_preferences(path, "hh-rlhf")
    path = write_jsonl(tmp_path / "hh2.jsonl", [{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: ho"}])
    with pytest.raises(DataError, match=r"hh2\.jsonl:1: field 'chosen': has no '\\n\\nAssistant:' turn"):
        load_preferences(path, "hh-rlhf")


def test_hh_rlhf_identical_replies_and_missing_reply(tmp_path):
    same = "\n\nHuman: a\n\nAssistant: b"
    path = write_jsonl(tmp_path / "hh.jsonl", [HH[0], {"chosen": same, "rejected": same}])
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'rejected': chosen is identical to rejected"):
        load_preferences(path)
    path = write_jsonl(tmp_path / "hh3.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant:", "rejected": same}])
    with pytest.raises(DataError, match=r"hh3\.jsonl:1: field 'chosen': has no reply"):
        load_preferences(path, "hh-rlhf")


# ---------------------------------------------------------------- summarize-from-feedback

SFB = [
    {"info": {"id": "t3_1", "post": "My cat knocks everything off the table.\n", "title": "Cat problems",
              "subreddit": "cats"},
     "summaries": [{"text": " cat breaks things", "policy": "sup2"}, {"text": "my cat is a menace", "policy": "ref"}],
     "choice": 1, "worker": "w7", "batch": "batch3", "split": "train"},
    {"info": {"id": "t3_2", "post": "Landlord won't fix the heater.", "title": "Cold apartment",
              "subreddit": "legaladvice"},
     "summaries": [{"text": " heater broken, landlord ignores"}, {"text": " apartment cold"}],
     "choice": 0, "worker": "w2", "batch": "batch3", "split": "valid1"},
    {"info": {"id": "cnn1", "article": "Stocks rose on Monday.", "site": "cnn"},
     "summaries": [{"text": "markets down"}, {"text": "stocks rose"}], "choice": 1},
]


def test_summarize_from_feedback_comparisons(tmp_path):
    path = write_jsonl(tmp_path / "batch3.json", SFB)  # OpenAI's batch files are JSON lines under .json
    expected = [
        ("SUBREDDIT: r/cats\nTITLE: Cat problems\nPOST: My cat knocks everything off the table.\nTL;DR:",
         " my cat is a menace", " cat breaks things"),
        ("SUBREDDIT: r/legaladvice\nTITLE: Cold apartment\nPOST: Landlord won't fix the heater.\nTL;DR:",
         " heater broken, landlord ignores", " apartment cold"),
        ("POST: Stocks rose on Monday.\nTL;DR:", " stocks rose", " markets down"),
    ]
    for fmt in ("summarize-from-feedback", "auto"):
        records = load_preferences(path, fmt)
        assert triples(records) == expected
    assert records[0].meta == {"source": "summarize-from-feedback", "id": "t3_1", "worker": "w7",
                               "batch": "batch3", "split": "train"}


@pytest.mark.parametrize("bad, needle", [
    ({"choice": 2}, "field 'choice': expected 0 or 1, got 2"),
    ({"choice": True}, "field 'choice': expected 0 or 1, got true"),
    ({"summaries": [{"text": "only one"}]}, "field 'summaries': expected a list of 2 summaries"),
    ({"summaries": [{"text": "a"}, {"txt": "b"}]}, "field 'summaries[1].text': missing"),
    ({"summaries": [{"text": "same"}, {"text": " same"}]}, "chosen is identical to rejected"),
    ({"info": {"title": "t"}}, "field 'info.post': missing"),
    ({"info": {"post": 5}}, "field 'info.post': expected a string, got int"),
])
def test_summarize_from_feedback_bad_lines(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "c.jsonl", [SFB[0], {**SFB[1], **bad}])
    with pytest.raises(DataError) as info:
        load_preferences(path, "summarize-from-feedback")
    assert str(info.value).startswith(f"{path}:2: ")
    assert needle in str(info.value)


# ---------------------------------------------------------------- TL;DR SFT

def test_tldr_sft_from_post_and_from_templated_prompt(tmp_path):
    path = write_jsonl(tmp_path / "tldr.jsonl", [
        {"subreddit": "relationships", "title": "Forgot her birthday", "post": " I forgot. ", "summary": "I forgot."},
        {"post": "Bought a car.", "summary": " new car"},
        {"prompt": "SUBREDDIT: r/x\nTITLE: y\nPOST: z\nTL;DR:", "summary": "short"},
    ])
    for fmt in ("tldr", "auto"):
        records = load_sft(path, fmt)
        assert [(r.prompt, r.completion) for r in records] == [
            ("SUBREDDIT: r/relationships\nTITLE: Forgot her birthday\nPOST: I forgot.\nTL;DR:", " I forgot."),
            ("POST: Bought a car.\nTL;DR:", " new car"),
            ("SUBREDDIT: r/x\nTITLE: y\nPOST: z\nTL;DR:", " short"),
        ]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"post": "p", "summary": "s"}, {"post": "p"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'summary': missing"):
        load_sft(bad, "tldr")


# ---------------------------------------------------------------- stack-exchange-paired

def test_stack_exchange_paired(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", [
        {"qid": 12, "question": "How do I reverse a list?", "date": "2014/01/01",
         "response_j": "Use `reversed(xs)`.", "response_k": "You can't."},
        {"qid": 13, "question": "Tabs or spaces?", "response_j": "Spaces, per PEP 8.", "response_k": "Tabs."},
    ])
    for fmt in ("stack-exchange-paired", "auto"):
        records = load_preferences(path, fmt)
        assert triples(records) == [
            ("Question: How do I reverse a list?\n\nAnswer:", " Use `reversed(xs)`.", " You can't."),
            ("Question: Tabs or spaces?\n\nAnswer:", " Spaces, per PEP 8.", " Tabs."),
        ]
    assert records[0].meta == {"source": "stack-exchange-paired", "qid": 12}
    bad = write_jsonl(tmp_path / "b.jsonl", [{"question": "q", "response_j": "a", "response_k": ["b"]}])
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'response_k': expected a string, got list"):
        load_preferences(bad)


# ---------------------------------------------------------------- project JSONL and mapped tables

def test_project_pair_jsonl_and_rankings_expand(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "p1", "chosen": "a", "rejected": "b", "margin": 2},
        {"prompt": "p2", "chosen": "c", "rejected": "d", "meta": {"annotator": 1}}])
    for fmt in ("auto", "jsonl"):
        records = load_preferences(pairs, fmt)
        assert records == [PairRecord("p1", "a", "b", 2.0), PairRecord("p2", "c", "d")]
    assert records[1].meta == {"annotator": 1}
    ranks = write_jsonl(tmp_path / "ranks.jsonl", [{"prompt": "r", "completions": ["x", "y", "z"]}])
    assert triples(load_preferences(ranks)) == [("r", "x", "y"), ("r", "x", "z"), ("r", "y", "z")]
    assert load_rankings(ranks) == [RankingRecord("r", ("x", "y", "z"))]
    assert load_rankings(pairs)[0] == RankingRecord("p1", ("a", "b"))


def test_other_loaders_convert_preferences(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH[:1])
    assert load_binary(path) == [
        BinaryRecord("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.", True),
        BinaryRecord("\n\nHuman: What is the capital of France?\n\nAssistant:", " I don't know.", False)]
    assert load_sft(path) == [SFTRecord("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.")]
    binary = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": "c", "label": False}])
    assert load_binary(binary) == [BinaryRecord("p", "c", False)]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match=r"sft\.jsonl: holds sft records, which cannot be read as pair records"):
        load_preferences(sft)


COLS = {"prompt": "instruction", "chosen": "good", "rejected": "bad"}
TABLE = [{"instruction": "Say hi", "good": "Hi!", "bad": "No.", "id": 1},
         {"instruction": "Count to 2", "good": "1, 2", "bad": "3", "id": 2}]
EXPECTED_TABLE = [("Say hi", "Hi!", "No."), ("Count to 2", "1, 2", "3")]


def test_json_list_and_data_object_with_column_mapping(tmp_path):
    listed = tmp_path / "a.json"
    listed.write_text(json.dumps(TABLE, indent=2))
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"data": TABLE, "version": 1}))
    for path in (listed, wrapped):
        for fmt in ("auto", "json", "jsonl"):
            assert triples(load_preferences(path, fmt, columns=COLS)) == EXPECTED_TABLE
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps([TABLE[0], {"instruction": "x", "good": 3, "bad": "y"}]))
    with pytest.raises(DataError, match=r"c\.json:2: field 'good': expected a string, got int \(read as 'chosen'\)"):
        load_preferences(bad, columns=COLS)


def test_csv_with_column_mapping_margin_and_line_numbers(tmp_path):
    path = tmp_path / "prefs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "good", "bad", "score"])
        w.writerow(["Say hi", "Hi!", "No.", "1.5"])
        w.writerow(["Two\nlines", "a, with comma", "b", ""])
        w.writerow(["Third", "same", "same", "0"])
    cols = {**COLS, "margin": "score"}
    # header on line 1; the quoted newline makes row 2 span lines 3-4, so the third row starts on line 5
    with pytest.raises(DataError, match=r"prefs\.csv:5: field 'bad': chosen is identical to rejected"):
        load_preferences(path, "csv", columns=cols)
    skipped = SkipCounter()
    records = load_preferences(path, columns=cols, skip_bad=True, skipped=skipped)
    assert records == [PairRecord("Say hi", "Hi!", "No.", 1.5), PairRecord("Two\nlines", "a, with comma", "b")]
    assert skipped.count == 1


def test_csv_bad_number_and_missing_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected,margin\np,a,b,lots\n")
    with pytest.raises(DataError, match=r"p\.csv:2: field 'margin': expected a number, got 'lots'"):
        load_preferences(path)
    with pytest.raises(DataError, match=r"p\.csv:2: field 'good': missing \(mapped to 'chosen'\)"):
        load_preferences(path, columns={"chosen": "good"})


def test_csv_cells_become_booleans_and_lists(tmp_path):
    binary = tmp_path / "kto.csv"
    with open(binary, "w", newline="") as f:
        csv.writer(f).writerows([["q", "answer", "ok", "meta"], ["Hi", "Hello", "true", ""],
                                 ["Hi", "Go away", "0", '{"who": 2}']])
    records = load_binary(binary, columns={"prompt": "q", "completion": "answer", "label": "ok"})
    assert records == [BinaryRecord("Hi", "Hello", True), BinaryRecord("Hi", "Go away", False)]
    assert [r.meta for r in records] == [{}, {"who": 2}]
    ranks = tmp_path / "r.csv"
    ranks.write_text('prompt,completions\np,"[""a"", ""b"", ""c""]"\n')
    assert load_rankings(ranks) == [RankingRecord("p", ("a", "b", "c"))]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion,label\np,c,maybe\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: field 'label': expected true or false, got \"maybe\""):
        load_binary(bad)


def test_parquet_with_column_mapping(tmp_path):
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(TABLE), path)
    for fmt in ("auto", "parquet", "jsonl"):
        assert triples(load_preferences(path, fmt, columns=COLS)) == EXPECTED_TABLE
    assert triples(load_preferences(path, columns=COLS, max_records=1)) == EXPECTED_TABLE[:1]
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable parquet file"):
        load_preferences(broken)


# ---------------------------------------------------------------- bad input

GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"prompt": "p", "chosen": \n')
    with pytest.raises(DataError, match=r"p\.jsonl:3: not valid JSON"):
        load_preferences(path)


@pytest.mark.parametrize("bad, needle", [
    ({"prompt": "p", "chosen": "a"}, "p.jsonl:2: field 'rejected': missing"),
    ({"prompt": "p", "chosen": 1, "rejected": "b"}, "p.jsonl:2: field 'chosen': expected a string, got int"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "p.jsonl:2: field 'rejected': chosen is identical"),
    ({"prompt": "p", "chosen": "a", "rejected": " "}, "p.jsonl:2: field 'rejected': is empty"),
])
def test_bad_record_names_line_and_field(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert needle in str(info.value)


def test_empty_file_missing_file_directory_and_unknown_format(tmp_path):
    for name in ("e.jsonl", "e.json", "e.csv"):
        (tmp_path / name).write_text("\n")
        with pytest.raises(DataError, match=rf"{name}: no records \(the file is empty\)"):
            load_preferences(tmp_path / name)
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="is a directory; pass a file"):
        load_preferences(tmp_path)
    with pytest.raises(DataError) as info:
        load_preferences(tmp_path / "e.jsonl", "hh")
    assert "unknown format 'hh'" in str(info.value)
    assert all(name in str(info.value) for name in FORMATS)


def test_bad_options(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"unknown field\(s\) in columns=: answer \(valid: prompt, chosen"):
        load_preferences(path, columns={"answer": "a"})
    with pytest.raises(DataError, match="columns= applies to generic tables"):
        load_preferences(path, "hh-rlhf", columns={"prompt": "x"})
    with pytest.raises(DataError, match="max_records must be a positive integer, got 0"):
        load_preferences(path, max_records=0)


def test_max_records_stops_reading_early(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "prompt": "q"}) + "\n{broken\n")
    assert triples(load_preferences(path, max_records=2)) == [("p", "a", "b"), ("q", "a", "b")]
    ranks = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "r", "completions": ["x", "y", "z"]}])
    assert triples(load_preferences(ranks, max_records=2)) == [("r", "x", "y"), ("r", "x", "z")]


def test_undetectable_keys_are_listed(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello", "score": 1}])
    with pytest.raises(DataError, match=r"x\.jsonl:1: cannot detect the format from the keys \['score', 'text'\]"):
        load_preferences(path)


def test_skip_bad_counts_and_keeps_order(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"prompt": "p0", "chosen": "a", "rejected": "b"}), "{oops",
             json.dumps({"prompt": "p2", "chosen": "a"}), json.dumps({"prompt": "p3", "chosen": "a", "rejected": "a"}),
             "[1]", json.dumps({"prompt": "p5", "chosen": "c", "rejected": "d"})]
    path.write_text("\n".join(lines) + "\n")
    skipped = SkipCounter()
    records = load_preferences(path, skip_bad=True, skipped=skipped)
    assert triples(records) == [("p0", "a", "b"), ("p5", "c", "d")]
    assert skipped.count == 4
    assert [m.split(": ")[0] for m in skipped.messages] == [f"{path}:{n}" for n in (2, 3, 4, 5)]


def test_skip_bad_on_first_line_still_detects_from_next(tmp_path):
    path = write_jsonl(tmp_path / "se.jsonl", [
        {"question": "q", "response_j": "same", "response_k": "same"},
        {"question": "q2", "response_j": "yes", "response_k": "no"}])
    skipped = SkipCounter()
    assert triples(load_preferences(path, skip_bad=True, skipped=skipped)) == [
        ("Question: q2\n\nAnswer:", " yes", " no")]
    assert skipped.count == 1


def test_skip_bad_with_nothing_left_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    skipped = SkipCounter()
    with pytest.raises(DataError, match=r"no records \(the file is empty or every record was bad\); first error: "
                                        r".*p\.jsonl:1: field 'rejected'"):
        load_preferences(path, skip_bad=True, skipped=skipped)
    assert skipped.count == 1


@pytest.mark.parametrize("obj, name", [
    (HH[0], "hh-rlhf"), (SFB[0], "summarize-from-feedback"),
    ({"question": "q", "response_j": "a", "response_k": "b"}, "stack-exchange-paired"),
    ({"post": "p", "summary": "s"}, "tldr"), (GOOD, "pair"), ({"prompt": "p", "completions": []}, "ranking"),
    ({"prompt": "p", "completion": "c", "label": True}, "binary"), ({"prompt": "p", "completion": "c"}, "sft"),
    ({"chosen": "plain text", "rejected": "other"}, None), ([1, 2], None),
])
def test_detect_format(obj, name):
    assert detect_format(obj) == name
