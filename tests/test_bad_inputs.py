"""A corpus of malformed inputs run through the real CLI: bad configs and overrides, data files, model
directories, reward callables and command-line misuse. Each must exit with status 2 and one line
`error: ...` naming the file, line or key, print no traceback, and change no file written before it.

The cases run `tinyrlhf.cli.main` in this process (a subprocess costs seconds of imports each); the last
tests run a few of them as `python -m tinyrlhf` subprocesses to check the real exit status and stderr.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_sft
from feedback_files import feedback_files
from tinyrlhf.cli import main

# keys of the tiny family_tree setup every training case starts from
TINY = ["train.progress=false", "train.threads=1", "eval.n_prompts=0", "train.max_steps=1", "train.batch_size=2",
        "data.task=family_tree", "model.tokenizer_vocab=400"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """root/: task data, a finished SFT run, broken copies of its model directory and broken input files."""
    root = tmp_path_factory.mktemp("bad")
    data, model = tiny_sft(root, steps=1)
    bad = root / "bad"
    bad.mkdir()

    def model_copy(name, damage):
        d = bad / name
        shutil.copytree(model, d)
        damage(d)
        return str(d)

    def truncate(path, size):
        with open(path, "r+b") as f:
            f.truncate(size)

    weights = os.path.getsize(os.path.join(model, "model.safetensors"))
    paths = {
        "root": str(root), "data": data, "model": model, "sft_run": str(root / "sft"),
        "corrupt_config": model_copy("corrupt_config", lambda d: (d / "config.json").write_text('{"model_type": "gpt2",')),
        "truncated_weights": model_copy("truncated_weights",
                                        lambda d: truncate(d / "model.safetensors", weights // 2)),
        "no_tokenizer": model_copy("no_tokenizer", lambda d: [os.remove(d / f) for f in os.listdir(d)
                                                               if f.startswith("tokenizer")]),
        "corrupt_tokenizer": model_copy("corrupt_tokenizer", lambda d: (d / "tokenizer.json").write_text("{")),
        "no_weights": model_copy("no_weights", lambda d: os.remove(d / "model.safetensors")),
        "bad_head": model_copy("bad_head", lambda d: ((d / "reward_head.safetensors").write_bytes(b"\x08\x00"),
                                                      (d / "reward_head.json").write_text('{"gain": 1, "bias": 0}'))),
        "bad_head_json": model_copy("bad_head_json", lambda d: (
            save_file({"weight": torch.zeros(1, 128), "bias": torch.zeros(1)}, str(d / "reward_head.safetensors")),
            (d / "reward_head.json").write_text('{"gain": 1,'))),
        "foreign_tokenizer": model_copy("foreign_tokenizer", lambda d: _bigger_tokenizer(data, model).save_pretrained(d)),
        "a_file": str(bad / "a_file.txt"),
        "dir_as_file": str(bad / "dir.jsonl"),
    }
    (bad / "a_file.txt").write_text("not a directory\n")
    (bad / "dir.jsonl").mkdir()
    files = {
        "non_utf8.jsonl": b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff\xfe", "completion": "b"}\n',
        "bad_json.jsonl": b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n',
        "missing_field.jsonl": b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "c"}\n'
                               b'{"prompt": "a"}\n',
        "empty.jsonl": b"\n\n",
        "pairs_same.jsonl": b'{"prompt": "a", "chosen": "x", "rejected": "x"}\n',
        "dup.yaml": b"train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n",
        "bad.yaml": b"train:\n  lr: [1, 2\n",
        "list.yaml": b"- train\n- lr\n",
        "non_utf8.yaml": b"out_dir: \xff\n",
        "neg_lr.yaml": b"seed: 0\ntrain:\n  max_steps: 3\n  lr: -0.5\n",
        "ok.yaml": b"train:\n  max_steps: 3\n",
        "bad_syntax_reward.py": b"def score(prompts, completions)\n    return [0.0] * len(completions)\n",
        "text_reward.py": b"def score(prompts, completions):\n    return ['good'] * len(completions)\n",
        "short_reward.py": b"def score(prompts, completions):\n    return [1.0]\n",
    }
    for name, content in files.items():
        (bad / name).write_bytes(content)
        paths[name] = str(bad / name)
    paths.update(feedback_files(bad))
    return paths


def _bigger_tokenizer(data: str, model: str):
    """A tokenizer with more tokens than the model's embedding has rows: as if taken from another model."""
    from tinyrlhf.models import train_tokenizer
    with open(os.path.join(data, "sft.jsonl")) as f:
        texts = [r["prompt"] + r["completion"] for r in map(json.loads, f)]
    tok = train_tokenizer(texts, 2000)
    with open(os.path.join(model, "config.json")) as f:
        assert len(tok) > json.load(f)["vocab_size"]
    return tok


def tree_hashes(root: str) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def fresh(tmp, name="run"):
    return f"out_dir={tmp / name}"


# (id, argv as a function of (env, tmp_path), substrings the error line must contain)
CASES = [
    # -- config values from overrides: the override is named (on the finished SFT run: nothing may change)
    ("lr-negative", lambda e, t: ["sft", f"out_dir={e['sft_run']}", "train.lr=-1"], ["override 'train.lr=-1'", "> 0"]),
    ("lr-inf", lambda e, t: ["sft", f"out_dir={e['sft_run']}", "train.lr=inf"], ["'train.lr'", "finite"]),
    ("lr-nan", lambda e, t: ["sft", f"out_dir={e['sft_run']}", "train.lr=.nan"], ["'train.lr'", "finite"]),
    ("batch-size-0", lambda e, t: ["sft", f"out_dir={e['sft_run']}", "train.batch_size=0"], ["'train.batch_size'", ">= 1"]),
    ("grad-accum-0", lambda e, t: ["sft", "train.grad_accum=0"], ["'train.grad_accum'", ">= 1"]),
    ("log-every-0", lambda e, t: ["sft", "train.log_every=0"], ["'train.log_every'", ">= 1"]),
    ("max-steps-negative", lambda e, t: ["sft", "train.max_steps=-5"], ["'train.max_steps'", ">= 0"]),
    ("warmup-negative", lambda e, t: ["sft", "train.warmup_steps=-1"], ["'train.warmup_steps'"]),
    ("threads-negative", lambda e, t: ["sft", "train.threads=-2"], ["'train.threads'"]),
    ("device-tpu", lambda e, t: ["sft", "train.device=tpu"], ["'train.device'", "cuda:N"]),
    ("device-cuda-absent", lambda e, t: ["sft", fresh(t), *TINY, f"data.dir={e['data']}", "train.device=cuda:99"],
     ["train.device=cuda:99", "CUDA device"]),
    ("max-length-1", lambda e, t: ["sft", "data.max_length=1"], ["'data.max_length'", ">= 2"]),
    ("max-train-negative", lambda e, t: ["sft", "data.max_train=-1"], ["'data.max_train'"]),
    ("lora-r-0", lambda e, t: ["sft", "lora.enabled=true", "lora.r=0"], ["'lora.r'", ">= 1"]),
    ("eval-temperature-0", lambda e, t: ["sft", "eval.temperature=0"], ["'eval.temperature'", "> 0"]),
    ("n-prompts-negative", lambda e, t: ["dpo", "eval.n_prompts=-3"], ["'eval.n_prompts'"]),
    ("dpo-beta-negative", lambda e, t: ["dpo", "beta=-1"], ["override 'beta=-1'", "'beta'"]),
    ("kto-beta-0", lambda e, t: ["kto", "beta=0"], ["'beta'", "> 0"]),
    ("cdpo-smoothing-half", lambda e, t: ["dpo", "loss=cdpo", "label_smoothing=0.5"], ["'label_smoothing'", "[0, 0.5)"]),
    ("ppo-zero-steps", lambda e, t: ["ppo", "train.max_steps=0"], ["'train.max_steps'", "online"]),
    ("ppo-top-p", lambda e, t: ["ppo", "rollout.top_p=1.5"], ["'rollout.top_p'", "(0, 1]"]),
    ("ppo-lam", lambda e, t: ["ppo", "ppo.lam=2"], ["'ppo.lam'"]),
    ("grpo-k-1", lambda e, t: ["grpo", "k=1"], ["'k'", ">= 2"]),
    ("adam-beta-1", lambda e, t: ["sft", "train.betas=[0.9,1.0]"], ["'train.betas'", "[0, 1)"]),
    ("seed-negative", lambda e, t: ["sft", "seed=-1"], ["'seed'"]),
    ("out-dir-is-a-file", lambda e, t: ["sft", f"out_dir={e['a_file']}"], ["'out_dir'", "is a file"]),
    ("wrong-type", lambda e, t: ["sft", "train.max_steps=many"], ["'train.max_steps'", "integer"]),
    ("bool-type", lambda e, t: ["sft", "lora.enabled=3"], ["'lora.enabled'", "true or false"]),
    ("section-as-value", lambda e, t: ["sft", "train=5"], ["override 'train=5'", "mapping"]),
    ("not-key-value", lambda e, t: ["sft", "train.lr"], ["'train.lr'", "key.sub=value"]),
    ("typo-blames-override", lambda e, t: ["sft", "--config", e["ok.yaml"], "train.lrr=1"],
     ["override 'train.lrr=1'", "did you mean 'train.lr'"]),
    # -- config files: the file and line are named
    ("config-missing", lambda e, t: ["sft", "--config", str(t / "nope.yaml")], ["nope.yaml", "not found"]),
    ("config-is-a-dir", lambda e, t: ["sft", "--config", e["root"]], ["is a directory"]),
    ("config-bad-yaml", lambda e, t: ["sft", "--config", e["bad.yaml"]], ["bad.yaml:3", "not valid YAML"]),
    ("config-duplicate-key", lambda e, t: ["sft", "--config", e["dup.yaml"]], ["dup.yaml:4", "duplicate key 'train.lr'"]),
    ("config-not-a-mapping", lambda e, t: ["sft", "--config", e["list.yaml"]], ["list.yaml", "mapping"]),
    ("config-non-utf8", lambda e, t: ["sft", "--config", e["non_utf8.yaml"]], ["non_utf8.yaml", "UTF-8"]),
    ("config-bad-value-line", lambda e, t: ["sft", "--config", e["neg_lr.yaml"]], ["neg_lr.yaml:4", "'train.lr'"]),
    # -- data files: file, line and field
    ("data-non-utf8", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={e['non_utf8.jsonl']}"],
     ["non_utf8.jsonl:2", "UTF-8"]),
    ("data-is-a-directory", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={e['dir_as_file']}"],
     ["dir.jsonl", "directory"]),
    ("data-missing", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={t / 'gone.jsonl'}"], ["gone.jsonl"]),
    ("data-bad-json", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={e['bad_json.jsonl']}"],
     ["bad_json.jsonl:2", "JSON"]),
    ("data-missing-field", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={e['missing_field.jsonl']}"],
     ["missing_field.jsonl:3", "'completion'"]),
    ("data-empty", lambda e, t: ["sft", fresh(t), *TINY, f"data.train_file={e['empty.jsonl']}"], ["empty.jsonl", "no records"]),
    ("eval-file-is-a-directory", lambda e, t: ["sft", fresh(t), *TINY, f"data.dir={e['data']}",
                                               f"data.eval_file={e['dir_as_file']}"], ["dir.jsonl", "directory"]),
    ("pairs-identical", lambda e, t: ["dpo", fresh(t), *TINY, f"model.path={e['model']}",
                                      f"data.train_file={e['pairs_same.jsonl']}"], ["pairs_same.jsonl:1", "identical"]),
    ("data-dir-without-manifest", lambda e, t: ["sft", fresh(t), "data.task=", f"data.dir={t}"], ["manifest.json"]),
    # -- model directories (training and eval)
    ("model-path-missing", lambda e, t: ["dpo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={t / 'no'}"],
     ["model.path", "no such directory"]),
    ("model-corrupt-config", lambda e, t: ["dpo", fresh(t), *TINY, f"data.dir={e['data']}",
                                           f"model.path={e['corrupt_config']}"], ["corrupt_config", "config.json", "JSON"]),
    ("model-truncated-weights", lambda e, t: ["kto", fresh(t), *TINY, f"data.dir={e['data']}",
                                              f"model.path={e['truncated_weights']}"],
     ["truncated_weights", "model.safetensors is truncated"]),
    ("model-no-tokenizer", lambda e, t: ["dpo", fresh(t), *TINY, f"data.dir={e['data']}",
                                         f"model.path={e['no_tokenizer']}"], ["no_tokenizer", "no tokenizer files"]),
    ("model-corrupt-tokenizer", lambda e, t: ["sft", fresh(t), *TINY, f"data.dir={e['data']}",
                                              f"model.path={e['corrupt_tokenizer']}"], ["corrupt_tokenizer", "tokenizer"]),
    ("model-foreign-tokenizer", lambda e, t: ["dpo", fresh(t), *TINY, f"data.dir={e['data']}",
                                              f"model.path={e['foreign_tokenizer']}"], ["foreign_tokenizer", "embedding"]),
    ("model-no-weights", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", "reward=gold",
                                       f"model.path={e['no_weights']}"], ["no_weights", "no weights"]),
    ("eval-corrupt-config", lambda e, t: ["eval", e["corrupt_config"], "--task", "family_tree", "n_prompts=2",
                                          "--out", str(t / "r.json")], ["corrupt_config", "config.json"]),
    ("eval-truncated-weights", lambda e, t: ["eval", e["truncated_weights"], "--task", "family_tree", "n_prompts=2",
                                             "--out", str(t / "r.json")], ["truncated_weights", "truncated"]),
    ("reward-normalize-on-truncated", lambda e, t: ["reward", fresh(t), *TINY, f"data.dir={e['data']}",
                                                    f"model.path={e['model']}", f"normalize_on={e['truncated_weights']}"],
     ["normalize_on", "truncated"]),
    ("reward-model-bad-head", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                            f"reward={e['bad_head']}"], ["bad_head", "reward_head.safetensors"]),
    ("reward-model-corrupt-head-json", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}",
                                                     f"model.path={e['model']}", f"reward={e['bad_head_json']}"],
     ["bad_head_json", "reward_head.json"]),
    # -- reward callables
    ("reward-no-module", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                       "reward=no_such_module_xyz:score"], ["no_such_module_xyz", "cannot import"]),
    ("reward-no-function", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                         "reward=json:no_such_fn"], ["json:no_such_fn", "no attribute"]),
    ("reward-not-callable", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                          "reward=os:sep"], ["os:sep", "not a function"]),
    ("reward-syntax-error", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                          "reward=bad_syntax_reward:score"], ["bad_syntax_reward", "SyntaxError"]),
    ("reward-returns-text", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                          "reward=text_reward:score", "rollout.prompts_per_step=2",
                                          "rollout.max_new_tokens=2"], ["text_reward:score", "not numbers"]),
    ("reward-wrong-length", lambda e, t: ["ppo", fresh(t), *TINY, f"data.dir={e['data']}", f"model.path={e['model']}",
                                          "reward=short_reward:score", "rollout.prompts_per_step=2",
                                          "rollout.max_new_tokens=2"], ["short_reward:score", "shape"]),
    # -- command-line misuse
    ("data-out-is-a-file", lambda e, t: ["data", "family_tree", "--out", e["a_file"]], ["a_file.txt", "is a file"]),
    ("data-out-holds-data", lambda e, t: ["data", "family_tree", "--out", e["data"], "seed=3"],
     ["already holds data", "--force"]),
    ("data-unknown-task", lambda e, t: ["data", "no_task", "--out", str(t / "d")], ["no_task"]),
    ("data-bad-seed", lambda e, t: ["data", "family_tree", "--out", str(t / "d"), "seed=abc"], ["seed"]),
    ("rloo-runs-grpo", lambda e, t: ["rloo", "algo=grpo"], ["tinyrlhf grpo"]),
    ("eval-unknown-setting", lambda e, t: ["eval", e["model"], "--task", "family_tree", "nprompts=3"], ["nprompts"]),
    ("eval-reward-judge-without-reward", lambda e, t: ["eval", e["model"], "--task", "family_tree", "--judge", "reward"],
     ["--reward"]),
    ("eval-out-is-a-directory", lambda e, t: ["eval", e["model"], "--task", "family_tree", "n_prompts=2", "--out",
                                              e["root"]], ["--out", "is a directory"]),
    # -- feedback export: the database is refused or read unchanged (byte for byte: the check below)
    ("export-zero-byte-db", lambda e, t: ["feedback", "export", e["fb_zero"], "--out", str(t / "o")],
     ["fb_zero.db", "empty file (0 bytes)", "nothing was changed"]),
    ("export-foreign-sqlite", lambda e, t: ["feedback", "export", e["fb_foreign"], "--out", str(t / "o")],
     ["fb_foreign.db", "other tables (users)"]),
    ("export-not-sqlite", lambda e, t: ["feedback", "export", e["fb_text"], "--out", str(t / "o")],
     ["fb_text.db", "not a usable feedback database"]),
    ("export-db-missing", lambda e, t: ["feedback", "export", str(t / "none.db"), "--out", str(t / "o")],
     ["none.db", "no such feedback database"]),
    ("export-db-is-a-directory", lambda e, t: ["feedback", "export", e["root"], "--out", str(t / "o")],
     ["not a file"]),
    ("export-batch-typo", lambda e, t: ["feedback", "export", e["fb_good"], "--out", str(t / "o"), "--batch",
                                        "round-l"], ["--batch 'round-l'", "batches: 'round-1'"]),
    ("export-malformed-row", lambda e, t: ["feedback", "export", e["fb_badrow"], "--out", str(t / "o")],
     ["fb_badrow.db: labels row 3", "field 'answer' is not valid JSON"]),
    ("export-choice-z", lambda e, t: ["feedback", "export", e["fb_choice_z"], "--out", str(t / "o")],
     ["fb_choice_z.db: labels row 3", "field 'choice'", '"Z"']),
    ("export-out-is-a-file", lambda e, t: ["feedback", "export", e["fb_good"], "--out", e["a_file"]], ["is a file"]),
    ("export-overrides", lambda e, t: ["feedback", "export", e["fb_good"], "--out", str(t / "o"), "x=1"],
     ["takes no key=value"]),
    # -- label: refused before the database exists (test_label_refused_leaves_nothing checks that too)
    ("label-foreign-db", lambda e, t: ["label", e["fb_foreign"], "--labellers", "a", "--port", "0"],
     ["fb_foreign.db", "other tables (users)"]),
    ("label-text-db", lambda e, t: ["label", e["fb_text"], "--labellers", "a", "--port", "0"],
     ["fb_text.db", "not a usable feedback database"]),
    ("label-db-is-a-directory", lambda e, t: ["label", e["root"], "--labellers", "a", "--port", "0"], ["not a file"]),
    ("label-model-context", lambda e, t: ["label", str(t / "fb.db"), "--task", "family_tree", "--model", e["model"],
                                          "--max-new-tokens", "100000", "--labellers", "a", "--port", "0"],
     ["--max-new-tokens 100000", "positions"]),
    ("label-model-broken", lambda e, t: ["label", str(t / "fb.db"), "--task", "family_tree", "--model",
                                         e["truncated_weights"], "--labellers", "a", "--port", "0"], ["truncated"]),
    # -- loop: a --db that is not a feedback database, refused before the data and SFT stages
    ("loop-garbage-db", lambda e, t: ["loop", "--task", "family_tree", "--rounds", "1", "--labels", "human", "--db",
                                      e["fb_text"], "--out", str(t / "loop")], ["--db", "fb_text.db", "not a usable"]),
    ("loop-foreign-db", lambda e, t: ["loop", "--task", "family_tree", "--rounds", "1", "--labels", "human", "--db",
                                      e["fb_foreign"], "--out", str(t / "loop")], ["--db", "other tables (users)"]),
]


@pytest.mark.parametrize("case_id, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case_id, argv, expected, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(env["a_file"]))  # reward=module:function finds the files written there
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    torch.set_num_threads(1)
    before = tree_hashes(env["root"])
    rc = main(argv(env, tmp_path))
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    for text in expected:
        assert text in errors[0], (text, errors[0])
    after = tree_hashes(env["root"])
    assert {k: after.get(k) for k in before} == before, "a file written before the bad input changed"


def test_corpus_size():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert len(LABEL_CASES) >= 15 and len({c[0] for c in LABEL_CASES}) == len(LABEL_CASES)


# `tinyrlhf label` options refused before anything is created: (id, argv after the db, words)
LABEL_CASES = [
    ("temperature-nan", ["--outputs", "{out}", "--temperature", "nan"], "--temperature must be a finite number"),
    ("temperature-inf", ["--outputs", "{out}", "--temperature", "inf"], "--temperature"),
    ("temperature-negative", ["--outputs", "{out}", "--temperature", "-1"], "--temperature"),
    ("lease-nan", ["--outputs", "{out}", "--lease", "nan"], "--lease"),
    ("lease-zero", ["--outputs", "{out}", "--lease", "0"], "--lease"),
    ("max-new-tokens-0", ["--outputs", "{out}", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    ("n-prompts-0", ["--outputs", "{out}", "--n-prompts", "0"], "--n-prompts"),
    ("double-share-nan", ["--outputs", "{out}", "--double-share", "nan"], "--double-share"),
    ("arena-prompts-negative", ["--outputs", "{out}", "--arena-prompts", "-1"], "--arena-prompts must be >= 0"),
    ("arena-votes-negative", ["--outputs", "{out}", "--arena-votes", "-3"], "--arena-votes"),
    ("batch-empty", ["--outputs", "{out}", "--batch", ""], "--batch ''"),
    ("batch-arena", ["--outputs", "{out}", "--batch", "arena"], "arena votes"),
    ("port-out-of-range", ["--outputs", "{out}", "--port", "70000"], "--port"),
    ("no-labellers", ["--outputs", "{out}", "--labellers", ""], "no labellers"),
    ("bad-labeller-name", ["--outputs", "{out}", "--labellers", "ok,a b"], "labeller name 'a b'"),
    ("labeller-name-too-long", ["--outputs", "{out}", "--labellers", "x" * 65], "labeller name"),
    ("outputs-bad-line", ["--outputs", "{bad_out}"], ":2: field 'outputs'"),
    ("outputs-missing", ["--outputs", "{gone}"], "gone.jsonl"),
    ("prompts-missing", ["--prompts", "{gone}", "--model", "{model}"], "gone.jsonl"),
    ("task-unknown", ["--task", "nope", "--model", "{model}"], "nope"),
    ("model-missing", ["--task", "family_tree", "--model", "{gone}"], "no such directory"),
    ("arena-one-model", ["--mode", "arena", "--model", "{model}"], "two or more --model"),
]


@pytest.mark.parametrize("case_id, args, words", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_label_refused_leaves_nothing(case_id, args, words, env, tmp_path, capsys):
    """A refused `tinyrlhf label`: exit 2, one line, and no database file (nor -wal / -shm) and no queued
    item left behind: every option, the labellers, the models and the items are checked before the
    database is created."""
    out, bad_out = tmp_path / "outputs.jsonl", tmp_path / "bad.jsonl"
    item = {"prompt": "p", "outputs": [{"model": "m", "text": "x"}, {"model": "n", "text": "y"}]}
    out.write_text(json.dumps(item) + "\n")
    bad_out.write_text(json.dumps(item) + "\n" + json.dumps({"prompt": "p", "outputs": "nope"}) + "\n")
    fill = {"{out}": str(out), "{bad_out}": str(bad_out), "{gone}": str(tmp_path / "gone.jsonl"),
            "{model}": env["model"]}
    argv = [fill.get(a, a) for a in args]
    if "--labellers" not in argv:
        argv += ["--labellers", "alice"]
    if "--port" not in argv:
        argv += ["--port", "0"]
    db = tmp_path / "fb.db"
    rc = main(["label", str(db), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "outputs.jsonl"]


def test_data_out_force_overwrites_and_reproduces(env, tmp_path, capsys):
    """Refused without --force (checked above); with --force the same seed writes the same bytes."""
    out = tmp_path / "d"
    assert main(["data", "family_tree", "--out", str(out), "n_train_prompts=20", "n_pairs=10"]) == 0
    first = tree_hashes(str(out))
    assert main(["data", "family_tree", "--out", str(out), "n_train_prompts=20", "n_pairs=10"]) == 2
    assert tree_hashes(str(out)) == first
    assert main(["data", "family_tree", "--out", str(out), "n_train_prompts=20", "n_pairs=10", "--force"]) == 0
    assert tree_hashes(str(out)) == first
    capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["sft", "train.lr=-1"],
    ["data", "family_tree", "--out", "{a_file}"],
    ["eval", "{truncated_weights}", "--task", "family_tree", "n_prompts=2"],
], ids=["override", "data-out", "eval-model"])
def test_real_cli_exit_status_and_stderr(argv, env):
    """The console entry point itself: status 2, one `error:` line, no traceback."""
    argv = [a.format(**env) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "tinyrlhf", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert [line.startswith("error: ") for line in proc.stderr.splitlines() if "error:" in line] == [True]


def test_truncated_reference_cache_is_recomputed(env, tmp_path, capsys):
    """A reference-cache file cut short (a kill mid-write in an older version, a full disk) is named on one
    line and rebuilt; the run then trains exactly as with the intact cache."""
    cache = tmp_path / "cache"
    args = ["dpo", *TINY, f"data.dir={env['data']}", f"model.path={env['model']}", f"ref_cache_dir={cache}",
            "train.log_every=1"]
    assert main([*args, f"out_dir={tmp_path / 'a'}"]) == 0
    names = sorted(os.listdir(cache))  # the training pairs' reference and the held-out pairs' reference
    assert len(names) == 2
    intact = {name: (cache / name).read_bytes() for name in names}
    for name in names:
        (cache / name).write_bytes(intact[name][: len(intact[name]) // 2])
    capsys.readouterr()
    assert main([*args, f"out_dir={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"reference cache {cache / name} is unreadable" in out and "recomputing it" in out
        assert torch.equal(torch.load(cache / name)["sums"], torch.load(_bytes_file(tmp_path, intact[name]))["sums"])
    metrics = [(tmp_path / run / "metrics.jsonl").read_text() for run in "ab"]
    assert [json.loads(line)["loss"] for line in metrics[0].splitlines()] == \
        [json.loads(line)["loss"] for line in metrics[1].splitlines()]


def _bytes_file(tmp_path, data: bytes):
    path = tmp_path / "intact.pt"
    path.write_bytes(data)
    return path
