"""Record types: validation, JSONL round trip, skipping bad lines, and the conversions between kinds."""
import gzip
import json

import pytest

from tinyrlhf.data import (BinaryRecord, PairRecord, RankingRecord, SFTRecord, SkipCounter, iter_jsonl,
                           pair_to_binary, pair_to_sft, pairs_from, ranking_to_pairs, read_records,
                           record_from_dict, record_to_dict, write_records)
from tinyrlhf.errors import DataError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- round trip

def test_round_trip_every_kind_keeps_values_and_meta(tmp_path):
    cases = {
        "sft": [SFTRecord("Q: 2+2?", " 4", {"src": "hand"}), SFTRecord("", " héllo ✓")],
        "pair": [PairRecord("p", " good", " bad", 1.5, {"annotator": 3}), PairRecord("p2", "a", "b")],
        "ranking": [RankingRecord("r", ("best", "mid", "worst"), {"gold": [3, 2, 1]})],
        "binary": [BinaryRecord("b", " yes", True), BinaryRecord("b", " no", False, {"k": 1})],
    }
    for kind, records in cases.items():
        path = str(tmp_path / f"{kind}.jsonl")
        assert write_records(path, records) == len(records)
        back = read_records(path, kind)
        assert back == records
        assert [r.meta for r in back] == [r.meta for r in records]  # meta is compare=False, so check it apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.jsonl", "pair.jsonl", "ranking.jsonl", "sft.jsonl"]


def test_record_to_dict_drops_absent_margin_and_empty_meta():
    assert record_to_dict(PairRecord("p", "a", "b")) == {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert record_to_dict(PairRecord("p", "a", "b", 0.5, {"x": 1})) == {
        "prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5, "meta": {"x": 1}}
    assert record_to_dict(RankingRecord("p", ("a", "b"))) == {"prompt": "p", "completions": ["a", "b"]}


def test_written_file_is_one_json_object_per_line(tmp_path):
    path = str(tmp_path / "p.jsonl")
    write_records(path, [PairRecord("p", "a", "b"), PairRecord("q", "c", "d", 2.0)])
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                              {"prompt": "q", "chosen": "c", "rejected": "d", "margin": 2.0}]


def test_read_records_reads_gzip(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    assert read_records(str(path), "sft") == [SFTRecord("a", "b"), SFTRecord("c", "d")]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("kind, obj, needle", [
    ("sft", {"prompt": "p"}, "field 'completion': missing"),
    ("sft", {"prompt": 3, "completion": "c"}, "field 'prompt': expected a string, got int"),
    ("sft", {"prompt": "p", "completion": "  "}, "field 'completion': is empty"),
    ("pair", {"prompt": "p", "chosen": "a"}, "field 'rejected': missing"),
    ("pair", {"prompt": "p", "chosen": "a", "rejected": "a"}, "chosen is identical to rejected"),
    ("pair", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": True}, "field 'margin': expected a number"),
    ("pair", {"prompt": "p", "chosen": "a", "rejected": "b", "meta": []}, "field 'meta': expected an object"),
    ("ranking", {"prompt": "p", "completions": ["a"]}, "needs at least 2 completions, got 1"),
    ("ranking", {"prompt": "p", "completions": ["a", "b", "a"]}, "has duplicate completions"),
    ("ranking", {"prompt": "p", "completions": "ab"}, "field 'completions': expected a list of strings"),
    ("binary", {"prompt": "p", "completion": "c", "label": 1}, "field 'label': expected true or false, got 1"),
    ("binary", {"prompt": "p", "completion": "c"}, "field 'label': missing"),
])
def test_record_from_dict_rejects_bad_records(kind, obj, needle):
    with pytest.raises(DataError) as info:
        record_from_dict(kind, obj, path="f.jsonl", line=7)
    assert str(info.value).startswith("f.jsonl:7: ")
    assert needle in str(info.value)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(DataError, match="unknown record kind 'pairs' \\(valid: sft, pair, ranking, binary, prompt\\)"):
        record_from_dict("pairs", {})


def test_data_error_is_a_value_error_with_its_position():
    err = DataError("is empty", path="a.jsonl", line=3, field="chosen")
    assert isinstance(err, ValueError)
    assert str(err) == "a.jsonl:3: field 'chosen': is empty"
    assert (err.path, err.line, err.field) == ("a.jsonl", 3, "chosen")


# ---------------------------------------------------------------- reading bad files

def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a", "completion": "b"}', '{"prompt": "a",'])
    with pytest.raises(DataError, match=r"p\.jsonl:2: not valid JSON"):
        read_records(path, "sft")
    with pytest.raises(DataError, match=r"p\.jsonl:2: not valid JSON"):
        list(iter_jsonl(path))


def test_skip_bad_goes_on_after_a_malformed_line(tmp_path):
    # Regression: a JSON error used to end reading, silently dropping every line after it.
    path = write_lines(tmp_path / "s.jsonl", [
        '{"prompt": "a", "completion": "1"}',
        '{not json',
        '{"prompt": "b"}',
        '',
        '{"prompt": "c", "completion": "3"}',
    ])
    skipped = SkipCounter()
    records = read_records(path, "sft", skip_bad=True, skipped=skipped)
    assert records == [SFTRecord("a", "1"), SFTRecord("c", "3")]
    assert skipped.count == 2
    assert "s.jsonl:2: not valid JSON" in skipped.messages[0]
    assert "s.jsonl:3: field 'completion': missing" in skipped.messages[1]


def test_empty_missing_and_directory_paths(tmp_path):
    empty = write_lines(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"e\.jsonl: no records \(the file is empty\)"):
        read_records(empty, "pair")
    with pytest.raises(DataError, match="no such file"):
        read_records(str(tmp_path / "nope.jsonl"), "pair")
    with pytest.raises(DataError, match="is a directory"):
        read_records(str(tmp_path), "pair")


def test_all_lines_bad_with_skip_bad_is_still_an_error(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", ['{"prompt": "a"}', "[1, 2]"])
    skipped = SkipCounter()
    with pytest.raises(DataError, match="every line was bad"):
        read_records(path, "sft", skip_bad=True, skipped=skipped)
    assert skipped.count == 2


# ---------------------------------------------------------------- conversions

def test_ranking_of_four_gives_six_pairs_best_first():
    pairs = ranking_to_pairs(RankingRecord("p", ("A", "B", "C", "D"), {"id": 9}))
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")]
    assert all(p.prompt == "p" and p.meta == {"id": 9} for p in pairs)
    pairs[0].meta["id"] = 0  # each pair owns a copy of meta
    assert pairs[1].meta == {"id": 9}


def test_pairs_from_mixes_pairs_and_rankings_and_rejects_sft():
    mixed = [PairRecord("p", "x", "y"), RankingRecord("q", ("a", "b", "c"))]
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs_from(mixed)] == [
        ("p", "x", "y"), ("q", "a", "b"), ("q", "a", "c"), ("q", "b", "c")]
    with pytest.raises(DataError, match="cannot make preference pairs from a SFTRecord"):
        pairs_from([SFTRecord("p", "c")])


def test_pair_to_binary_and_pair_to_sft():
    pair = PairRecord("p", " good", " bad", 1.0, {"a": 1})
    binary = pair_to_binary(pair)
    assert [(b.prompt, b.completion, b.label) for b in binary] == [("p", " good", True), ("p", " bad", False)]
    assert binary[1].meta == {"a": 1}
    sft = pair_to_sft(pair)
    assert (sft.prompt, sft.completion, sft.meta) == ("p", " good", {"a": 1})
