"""Datasets by name or path (issue 24 item 2): `data.dataset` reads a save_to_disk directory, a directory of
parquet or JSON lines files, or a Hugging Face hub name (from the datasets cache here: no test touches the
network), through the same loaders as a file. Each test writes its own small datasets in the real shapes of
the public ones; the reference is always the same rows read from a JSONL file."""
from __future__ import annotations

import json
import time

import pytest

datasets = pytest.importorskip("datasets")  # the `datasets` extra is in the test extra: CI always has it

from tinyrlhf.cli import main  # noqa: E402
from tinyrlhf.config import DataConfig, SFTConfig, load_config  # noqa: E402
from tinyrlhf.config.base import ColumnsConfig  # noqa: E402
from tinyrlhf.data import (DatasetRows, SkipCounter, load_binary, load_preferences, load_prompts,  # noqa: E402
                           load_rankings, load_sft, open_dataset)
from tinyrlhf.errors import ConfigError, DataError  # noqa: E402
from tinyrlhf.train.data import load_records  # noqa: E402

FAST = ["train.threads=1", "train.progress=false", "train.batch_size=4"]


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """The datasets cache in tmp_path, offline mode on (conftest's HF_HUB_OFFLINE=1), and the hub endpoint a
    closed local port: whatever a test does, nothing leaves this machine."""
    import datasets.config as C
    monkeypatch.setattr(C, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_ENDPOINT", "http://127.0.0.1:9")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def local_forms(root, rows, name="d") -> tuple[str, list[str]]:
    """The same rows as a JSONL file, and as three dataset directories: save_to_disk, parquet, JSON lines."""
    root.mkdir(parents=True, exist_ok=True)
    jsonl = write_jsonl(root / f"{name}.jsonl", rows)
    saved = root / f"{name}-saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    (root / f"{name}-parquet").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(root / f"{name}-parquet" / "train.parquet"))
    (root / f"{name}-json").mkdir()
    write_jsonl(root / f"{name}-json" / "train.jsonl", rows)
    return jsonl, [str(saved), str(root / f"{name}-parquet"), str(root / f"{name}-json")]


def same(a: list, b: list):
    """Records equal, meta included (dataclass equality leaves meta out)."""
    assert a == b and [r.meta for r in a] == [r.meta for r in b]


def ask(i):
    return f"What does animal {i} eat?"


# The shapes of the public datasets, a few rows each.
SHAPES = {
    "sft": [{"prompt": ask(i), "completion": f" Seeds {i}."} for i in range(4)],
    "pair": [{"prompt": ask(i), "chosen": f" Seeds {i}.", "rejected": " Rocks.", "margin": float(i)}
             for i in range(4)],
    "binary (KTO label column)": [{"prompt": ask(i), "completion": f" Seeds {i}.", "label": i % 2 == 0}
                                  for i in range(4)],
    "ranking": [{"prompt": ask(i), "completions": [f" Seeds {i}.", " Grass.", " Rocks."]} for i in range(3)],
    "hh-rlhf": [{"chosen": f"\n\nHuman: {ask(i)}\n\nAssistant: Seeds {i}.",
                 "rejected": f"\n\nHuman: {ask(i)}\n\nAssistant: Rocks."} for i in range(3)],
    "summarize-from-feedback": [
        {"info": {"id": "t3_1", "post": "My cat knocks everything off the table.", "title": "Cats",
                  "subreddit": "cats"},
         "summaries": [{"text": " cat breaks things", "policy": "sup2"}, {"text": " a menace", "policy": "ref"}],
         "choice": 1, "worker": "w7", "batch": "b3", "split": "train"},
        {"info": {"id": "cnn1", "article": "Stocks rose on Monday.", "site": "cnn"},  # no post: its info.post is null
         "summaries": [{"text": "markets down"}, {"text": "stocks rose"}], "choice": 1, "worker": "w2",
         "batch": "b4", "split": "valid1"}],
    "stack-exchange-paired": [{"qid": i, "question": f"How do I sort {i} things?", "response_j": "Use sorted().",
                               "response_k": "You can't."} for i in range(3)],
    "tldr": [{"subreddit": "cats", "title": f"Cat {i}", "post": "It sleeps all day.", "summary": " sleepy cat"}
             for i in range(3)],
    # trl-lib/ultrafeedback_binarized: two whole conversations (chat pairs), scores beside them
    "ultrafeedback (trl-lib)": [
        {"chosen": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": f"Seeds {i}."}],
         "rejected": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": "Rocks."}],
         "score_chosen": 8.0, "score_rejected": 2.0} for i in range(3)],
    # HuggingFaceH4/ultrafeedback_binarized: a prompt string, message lists and the conversation again
    "ultrafeedback (H4)": [
        {"prompt": ask(i), "prompt_id": f"id{i}",
         "chosen": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": f"Seeds {i}."}],
         "rejected": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": "Rocks."}],
         "messages": [{"role": "user", "content": ask(i)}, {"role": "assistant", "content": f"Seeds {i}."}],
         "score_chosen": 8.0, "score_rejected": 2.0} for i in range(3)],
    "messages (chat sft)": [{"messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": ask(i)},
                                          {"role": "assistant", "content": f"Seeds {i}."}]} for i in range(3)],
    "prompt/completion messages": [{"prompt": [{"role": "user", "content": ask(i)}],
                                    "completion": [{"role": "assistant", "content": f"Seeds {i}."}]}
                                   for i in range(3)],
    "prompts only": [{"prompt": ask(i)} for i in range(3)],
}
# every loader a stage uses that reads the shape (sft and the online stages' prompts: load_sft; reward and the
# DPO family: load_preferences; kto: load_binary; eval: load_prompts)
READERS = {
    "sft": (load_sft, load_prompts), "pair": (load_preferences, load_sft, load_binary, load_rankings, load_prompts),
    "binary (KTO label column)": (load_binary, load_prompts), "ranking": (load_rankings, load_preferences, load_sft),
    "hh-rlhf": (load_preferences, load_sft, load_binary, load_prompts),
    "summarize-from-feedback": (load_preferences, load_sft, load_prompts),
    "stack-exchange-paired": (load_preferences, load_binary), "tldr": (load_sft, load_prompts),
    "ultrafeedback (trl-lib)": (load_preferences, load_sft, load_binary, load_prompts),
    "ultrafeedback (H4)": (load_preferences, load_sft, load_binary, load_prompts),
    "messages (chat sft)": (load_sft, load_prompts), "prompt/completion messages": (load_sft, load_prompts),
    "prompts only": (load_prompts,),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_reads_the_same_records_from_each_kind_of_directory_as_from_jsonl(tmp_path, shape):
    jsonl, dirs = local_forms(tmp_path, SHAPES[shape])
    for load in READERS[shape]:
        expected = load(jsonl)
        assert len(expected) >= 2
        for d in dirs:
            rows = open_dataset(d)
            assert isinstance(rows, DatasetRows) and len(rows) == len(SHAPES[shape])
            same(load(rows), expected)


def test_the_chat_pairs_become_the_same_prompt_and_replies(tmp_path):
    """What UltraFeedback's message lists mean, by hand: the turns before the replies are the prompt."""
    _, dirs = local_forms(tmp_path, SHAPES["ultrafeedback (trl-lib)"])
    pairs = load_preferences(open_dataset(dirs[0]))
    assert (pairs[1].prompt, pairs[1].chosen, pairs[1].rejected) == (
        f"\n\nHuman: {ask(1)}\n\nAssistant:", " Seeds 1.", " Rocks.")
    assert pairs[1].meta["messages"] == [{"role": "user", "content": ask(1)}]
    _, h4 = local_forms(tmp_path / "h4", SHAPES["ultrafeedback (H4)"])  # its text prompt repeats the user turn
    same(load_preferences(open_dataset(h4[1])), pairs)


def test_the_stages_records_and_held_out_split_equal_the_file_pair(tmp_path):
    """load_records (every offline stage's data; the online stages read sft records): a DatasetDict's train
    split and data.eval_split give what data.train_file and data.eval_file give."""
    for kind, shape in (("sft", "sft"), ("pair", "pair"), ("binary", "binary (KTO label column)"),
                        ("pair", "ultrafeedback (H4)")):
        rows = SHAPES[shape]
        root = tmp_path / kind / shape.split()[0]
        train, test = local_forms(root, rows[:-1], "train")[0], local_forms(root, rows[-1:] * 2, "test")[0]
        saved = root / "dict"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:-1]),
                              "test": datasets.Dataset.from_list(rows[-1:] * 2)}).save_to_disk(str(saved))
        parquet = root / "pq" / "data"
        parquet.mkdir(parents=True)
        datasets.Dataset.from_list(rows[:-1]).to_parquet(str(parquet / "train-00000-of-00001.parquet"))
        datasets.Dataset.from_list(rows[-1:] * 2).to_parquet(str(parquet / "test-00000-of-00001.parquet"))
        want_train, want_eval, want_metrics = load_records(DataConfig(train_file=train, eval_file=test), kind)
        for d in (str(saved), str(parquet.parent)):
            got_train, got_eval, metrics = load_records(DataConfig(dataset=d, eval_split="test"), kind)
            same(got_train, want_train)
            same(got_eval, want_eval)
            assert metrics == want_metrics and len(got_eval) > 0
        assert load_records(DataConfig(dataset=str(saved)), kind)[1] == []  # no eval_split: nothing held out


def test_kto_reads_a_held_out_split_of_pairs_as_pairs_and_a_task_warns(tmp_path):
    """KTO's held-out accuracy needs pairs: data.eval_split is re-read as pairs like data.eval_file."""
    from tinyrlhf.config import KTOConfig
    from tinyrlhf.train.data import own_data_with_task
    from tinyrlhf.train.kto import heldout_examples
    rows = SHAPES["pair"]
    d = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]),
                          "test": datasets.Dataset.from_list(rows[2:])}).save_to_disk(str(d))
    cfg = load_config(KTOConfig, None, [f"data.dataset={d}", "data.eval_split=test"])
    _, evals, _ = load_records(cfg.data, "binary")
    examples, n_pairs = heldout_examples(cfg, evals)
    assert n_pairs == 2 and [(e.completion, e.label) for e in examples] == [
        (" Seeds 2.", True), (" Rocks.", False), (" Seeds 3.", True), (" Rocks.", False)]
    line = own_data_with_task(DataConfig(task="family_tree", dataset=str(d)))
    assert line.startswith(f"warning: data.task=family_tree with your own data.dataset={d}:")


def test_columns_map_a_datasets_own_names_and_a_missing_column_names_the_row(tmp_path):
    rows = [{"question": ask(i), "answer": f" Seeds {i}.", "good": i % 2 == 1} for i in range(4)]
    jsonl, dirs = local_forms(tmp_path, rows)
    for load, columns in ((load_sft, {"prompt": "question", "completion": "answer"}),
                          (load_binary, {"prompt": "question", "completion": "answer", "label": "good"})):
        for d in dirs:
            same(load(open_dataset(d), columns=columns), load(jsonl, columns=columns))
    mapped = DataConfig(dataset=dirs[1], columns=ColumnsConfig(prompt="question", completion="answer"))
    records, _, _ = load_records(mapped, "sft")
    assert [(r.prompt, r.completion) for r in records] == [(ask(i), f" Seeds {i}.") for i in range(4)]
    with pytest.raises(DataError) as e:
        load_sft(open_dataset(dirs[0]), columns={"prompt": "query", "completion": "answer"})
    assert str(e.value) == f"dataset {dirs[0]}, row 0: field 'query': missing (mapped to 'prompt')"


def test_a_bad_row_names_the_dataset_split_and_row_and_skip_bad_counts_it(tmp_path):
    rows = [{"prompt": ask(i), "chosen": f" Seeds {i}.", "rejected": " Rocks."} for i in range(4)]
    rows[2]["chosen"] = " Rocks."  # chosen identical to rejected
    jsonl, dirs = local_forms(tmp_path, rows)
    with pytest.raises(DataError) as from_file:
        load_preferences(jsonl)
    assert str(from_file.value) == f"{jsonl}:3: field 'rejected': chosen is identical to rejected"
    for d in dirs:
        with pytest.raises(DataError) as e:
            load_preferences(open_dataset(d))
        split = "" if d.endswith("saved") else ", split train"  # a saved Dataset: no splits
        assert str(e.value) == f"dataset {d}{split}, row 2: field 'rejected': chosen is identical to rejected"
        skipped = SkipCounter()
        assert [r.prompt for r in load_preferences(open_dataset(d), skip_bad=True, skipped=skipped)] == \
            [ask(0), ask(1), ask(3)]
        assert skipped.count == 1
    # a null cell counts as a missing one; an empty split is no records
    rows[2] = {"prompt": ask(2), "chosen": None, "rejected": " Rocks."}
    saved = tmp_path / "null"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(DataError, match=rf"^dataset {saved}, row 2: field 'chosen': missing$"):
        load_preferences(open_dataset(str(saved)))
    empty = DatasetRows(datasets.Dataset.from_list(rows).select([]), "dataset org/name, split train")
    with pytest.raises(DataError, match=r"^dataset org/name, split train: no records \(the split is empty\)$"):
        load_preferences(empty)


def test_splits_a_default_a_missing_one_listed_and_a_subset(tmp_path):
    one = [{"prompt": ask(0), "completion": " a"}]
    two = [{"prompt": ask(1), "completion": " b"}]
    d = tmp_path / "dict"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(one),
                          "test": datasets.Dataset.from_list(two)}).save_to_disk(str(d))
    with pytest.raises(DataError) as e:
        open_dataset(str(d))
    assert str(e.value) == (f"data.dataset '{d}' has the splits validation, test and none is 'train'; "
                            "pick one with data.split")
    assert load_sft(open_dataset(str(d), split="test"))[0].completion == " b"
    with pytest.raises(DataError) as e:
        load_records(DataConfig(dataset=str(d), split="test", eval_split="dev"), "sft")
    assert str(e.value) == f"data.dataset '{d}' has no split 'dev' (data.eval_split); its splits: validation, test"
    only = tmp_path / "only"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(one)}).save_to_disk(str(only))
    assert str(open_dataset(str(only))) == f"dataset {only}, split validation"  # the only split: no need to name it
    # a single saved Dataset has no splits to choose from
    single = tmp_path / "single"
    datasets.Dataset.from_list(one).save_to_disk(str(single))
    with pytest.raises(DataError, match="is a single dataset without splits .*leave data.split unset"):
        open_dataset(str(single), split="train")
    # subsets: a directory whose README declares configurations, as hub datasets do
    sub = tmp_path / "subsets"
    for name, rows in (("small", one), ("big", one + two)):
        (sub / name).mkdir(parents=True)
        write_jsonl(sub / name / "train.jsonl", rows)
    (sub / "README.md").write_text("---\nconfigs:\n- config_name: small\n  data_files:\n  - split: train\n"
                                   "    path: small/*.jsonl\n- config_name: big\n  data_files:\n  - split: train\n"
                                   "    path: big/*.jsonl\n---\n")
    assert len(load_sft(open_dataset(str(sub), subset="small"))) == 1
    big, _, _ = load_records(DataConfig(dataset=str(sub), subset="big"), "sft")
    assert [r.completion for r in big] == [" a", " b"]
    with pytest.raises(DataError) as e:
        open_dataset(str(sub), subset="huge")
    assert "\n" not in str(e.value) and "'huge'" in str(e.value) and "small" in str(e.value), str(e.value)


def test_config_checks(tmp_path):
    def bad(key, **kw):
        with pytest.raises(ConfigError) as e:
            load_config(SFTConfig, None, [f"data.{k}={v}" for k, v in kw.items()])
        assert f"config key 'data.{key}'" in str(e.value), str(e.value)
        return str(e.value)
    assert "not both" in bad("dataset", dataset="org/name", train_file="x.jsonl")
    assert "needs data.dataset" in bad("split", split="train")
    assert "needs data.dataset" in bad("subset", subset="en")
    assert "training split too" in bad("eval_split", dataset="org/name", eval_split="train")
    assert "not both" in bad("eval_split", dataset="org/name", eval_split="test", eval_file="e.jsonl")
    with pytest.raises(DataError, match=r"is a file; a dataset is a hub name or a directory \(a file goes in "):
        open_dataset(write_jsonl(tmp_path / "a.jsonl", SHAPES["sft"]))
    with pytest.raises(DataError, match=r"no such directory"):
        open_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"cannot read it as a dataset"):
        (tmp_path / "nothing").mkdir()
        open_dataset(str(tmp_path / "nothing"))


def test_eval_sizes_its_answers_on_a_runs_training_dataset(tmp_path):
    """eval on prompts without references sizes max_new_tokens on the run's training completions: those of
    its data.dataset split when it had no data.train_file."""
    from tinyrlhf.eval.evaluate import training_completions
    rows = [{"q": ask(i), "a": f" Seeds {i}."} for i in range(3)]
    d = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(d))
    run_cfg = {"data": {"dataset": str(d), "split": "", "columns": {"prompt": "q", "completion": "a"}}}
    assert training_completions(run_cfg, str(tmp_path)) == ([" Seeds 0.", " Seeds 1.", " Seeds 2."], str(d))
    assert training_completions({"data": {"dataset": str(tmp_path / "gone")}}, str(tmp_path)) == ([], "")


def test_eval_options_are_checked(capsys):
    for args, needle in ((["--split", "test"], "--split and --subset choose a part of --dataset"),
                         (["--dataset", "org/name", "--prompts", "p.jsonl"], "give one of --task, --prompts and "
                                                                              "--dataset")):
        assert main(["eval", "runs/none", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_without_the_datasets_library_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(DataError) as e:
        open_dataset("trl-lib/ultrafeedback_binarized")
    assert str(e.value) == ("data.dataset needs the datasets library, an optional extra: "
                            "pip install 'tinyrlhf[datasets]'")


def fake_hub_cache(tmp_path, repo: str, rows: dict[str, list]):
    """What `load_dataset(repo)` leaves in the datasets cache (CACHE/org___name/default/0.0.0/HASH: the
    split arrow files and dataset_info.json), made from local parquet files: the cache a run with internet
    fills."""
    import datasets.config as C
    import glob
    import os
    import shutil
    src = tmp_path / "hub-src" / "data"
    src.mkdir(parents=True)
    for split, r in rows.items():
        datasets.Dataset.from_list(r).to_parquet(str(src / f"{split}-00000-of-00001.parquet"))
    datasets.load_dataset(str(src.parent), cache_dir=str(tmp_path / "build"))
    built = next(p for p in glob.glob(str(tmp_path / "build" / "*" / "*" / "*" / "*")) if os.path.isdir(p))
    org, name = repo.split("/")
    dst = os.path.join(C.HF_DATASETS_CACHE, f"{org}___{name}", "default", "0.0.0", "0123abcd")
    shutil.copytree(built, dst)
    for f in os.listdir(dst):
        if f.endswith(".arrow"):
            os.rename(os.path.join(dst, f), os.path.join(dst, f.replace("hub-src-", f"{name}-")))
    info = json.load(open(os.path.join(dst, "dataset_info.json")))
    with open(os.path.join(dst, "dataset_info.json"), "w") as f:
        json.dump({**info, "dataset_name": name, "config_name": "default"}, f)


def test_a_hub_name_comes_from_the_datasets_cache_offline(tmp_path):
    rows = SHAPES["ultrafeedback (trl-lib)"]
    fake_hub_cache(tmp_path, "tinyorg/tiny_prefs", {"train": rows[:2], "test": rows[2:]})
    jsonl = write_jsonl(tmp_path / "train.jsonl", rows[:2])
    same(load_preferences(open_dataset("tinyorg/tiny_prefs")), load_preferences(jsonl))
    train, evals, _ = load_records(DataConfig(dataset="tinyorg/tiny_prefs", eval_split="test"), "pair")
    assert [p.chosen for p in train] == [" Seeds 0.", " Seeds 1."] and [p.chosen for p in evals] == [" Seeds 2."]


def test_an_uncached_hub_name_offline_is_one_quick_line(tmp_path, capsys):
    """HF_DATASETS_OFFLINE / HF_HUB_OFFLINE (conftest sets it), through the command line too."""
    t = time.time()
    with pytest.raises(DataError) as e:
        open_dataset("tinyorg/not-cached", split="train")
    assert time.time() - t < 2
    assert str(e.value).startswith("data.dataset 'tinyorg/not-cached': not a local directory, offline mode is on "
                                   "(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), and it is not in the datasets cache (")
    assert main(["sft", "data.dataset=tinyorg/not-cached", f"out_dir={tmp_path / 'run'}", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tinyorg/not-cached'" in err and "not in the datasets cache" in err, err


def test_no_network_without_offline_mode_is_one_quick_line_too(monkeypatch):
    """Offline mode off but no network: here the hub's name does not resolve (getaddrinfo fails for it, as with
    no DNS; nothing is sent). One probe, no retries (the library alone backs off for ~25 s), the same line."""
    import socket

    import datasets.config as C
    import huggingface_hub.constants as H
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(H, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(C, "HF_ENDPOINT", "https://hub.invalid")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo
    lookups = []

    def getaddrinfo(host, *args, **kw):
        if host == "hub.invalid":
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    t = time.time()
    with pytest.raises(DataError) as e:
        open_dataset("tinyorg/not-cached")
    assert time.time() - t < 5 and lookups == ["hub.invalid"]  # the probe's lookup, and no other
    assert str(e.value).startswith("data.dataset 'tinyorg/not-cached': not a local directory, the Hugging Face hub "
                                   "(https://hub.invalid) could not be reached, and it is not in the datasets cache")
    assert C.HF_HUB_OFFLINE is False  # offline mode was on for that one call only


# ---------------------------------------------------------------- end to end

def test_sft_on_a_dataset_directory_trains_exactly_as_on_the_same_jsonl_files(tmp_path, capsys):
    """`tinyrlhf sft data.dataset=DIR data.eval_split=test` (mapped columns) logs the very numbers of the run on
    the equivalent train and eval JSONL files; `tinyrlhf eval --dataset` samples what `--prompts` samples."""
    rows = [{"q": ask(i), "a": f" The animal {i} eats seeds."} for i in range(12)]
    root = tmp_path / "data"
    root.mkdir()
    train, test = write_jsonl(root / "train.jsonl", rows[:8]), write_jsonl(root / "test.jsonl", rows[8:])
    d = root / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]),
                          "test": datasets.Dataset.from_list(rows[8:])}).save_to_disk(str(d))
    common = ["data.columns.prompt=q", "data.columns.completion=a", "train.max_steps=4", "train.eval_every=2",
              "train.log_every=1", *FAST]
    assert main(["sft", f"data.dataset={d}", "data.eval_split=test", f"out_dir={tmp_path / 'ds'}", *common]) == 0
    assert main(["sft", f"data.train_file={train}", f"data.eval_file={test}", f"out_dir={tmp_path / 'file'}",
                 *common]) == 0

    def numbers(run):
        rows = [json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")]
        return [{k: v for k, v in r.items() if k.startswith(("loss", "eval/", "data/", "step"))} for r in rows]
    ds_rows, file_rows = numbers("ds"), numbers("file")
    assert ds_rows == file_rows and any("eval/loss" in r for r in ds_rows), ds_rows
    summary = json.load(open(tmp_path / "ds" / "summary.json"))
    assert summary["finished"] and summary["data/train_records"] == 8
    capsys.readouterr()
    results = {}
    for how, args in (("dataset", ["--dataset", str(d)]), ("file", ["--prompts", test])):
        out = tmp_path / f"eval-{how}.json"
        assert main(["eval", str(tmp_path / "ds"), *args, "--columns", "prompt=q,completion=a", "--out", str(out),
                     "n_prompts=4", "max_new_tokens=6"]) == 0
        results[how] = json.load(open(out)), open(tmp_path / f"eval-{how}.samples.jsonl").read()
    assert results["dataset"][0]["prompts"]["file"] == f"dataset {d}, split test"  # eval's default split: test
    (ds_result, ds_samples), (file_result, file_samples) = results["dataset"], results["file"]
    assert ds_result["prompts"]["n"] == 4 and ds_result["rouge_l"] == file_result["rouge_l"]
    assert ds_samples.count("\n") == 4 and ds_samples == file_samples
