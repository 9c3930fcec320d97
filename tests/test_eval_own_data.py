"""Your own data, end to end: DPO/KTO held-out metrics on data.eval_file (checked against a recomputation
from the saved model), `tinyrlhf eval --prompts FILE` with a reward model and a chat judge, and the
prompts loader on every format."""
import csv
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import torch.nn.functional as F

from tinyrlhf.cli import main
from tinyrlhf.config import KTOConfig, PreferenceConfig, RewardConfig, load_config
from tinyrlhf.data import load_prompts, read_records
from tinyrlhf.train.policy_eval import completion_logps
from tinyrlhf.loading import load_causal_lm
from tinyrlhf.models import load_tokenizer
from tinyrlhf.train.kto import run_kto
from tinyrlhf.train.preference import run_preference
from tinyrlhf.train.reward import run_reward
from tinyrlhf.train.rl import reward_source

from conftest import tiny_sft

RUN = ["train.max_steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.lr=5e-3", "train.log_every=1",
       "train.eval_every=2", "train.save_every=0", "train.progress=false", "train.threads=1",
       "train.precision=fp32", "eval.n_prompts=0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    data, sft = tiny_sft(root)
    run_reward(load_config(RewardConfig, None, [f"out_dir={root / 'rm'}", f"model.path={sft}", f"data.dir={data}",
                                                "data.task=family_tree", "train.max_steps=2", "train.batch_size=4",
                                                "train.progress=false", "train.threads=1", "normalize_samples=8"]))
    return root, data, sft


def rows(run_dir):
    return [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]


def implicit_rewards(model_dir, ref_dir, pairs, beta):
    """β·(log π − log π_ref) of chosen and rejected, recomputed from the saved model on flat rows in fp32."""
    cpu = torch.device("cpu")
    policy, ref, tok = load_causal_lm(model_dir), load_causal_lm(ref_dir), load_tokenizer(model_dir)
    prompts = [p.prompt for p in pairs]
    out = []
    for side in ("chosen", "rejected"):
        completions = [getattr(p, side) for p in pairs]
        out.append(beta * (completion_logps(policy, tok, prompts, completions, cpu, "fp32")
                           - completion_logps(ref, tok, prompts, completions, cpu, "fp32")))
    return out


def test_dpo_reports_heldout_accuracy_margin_and_loss_on_its_eval_file(base, tmp_path):
    root, data, sft = base
    out = str(tmp_path / "dpo")
    # your own files: no built-in task, so no gold reward; the eval file holds 8 held-out pairs
    eval_file = str(tmp_path / "heldout.jsonl")
    with open(os.path.join(data, "eval_pairs.jsonl")) as f, open(eval_file, "w") as g:
        g.writelines(f.readlines()[:8])
    summary = run_preference(load_config(PreferenceConfig, None, [
        f"out_dir={out}", f"model.path={sft}", f"data.train_file={data}/pairs.jsonl", f"data.eval_file={eval_file}",
        f"ref_cache_dir={tmp_path / 'cache'}", "beta=0.5", *RUN]))
    evals = [r for r in rows(out) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]  # at eval_every and at the end
    assert summary["eval/pairs"] == 8 and "gold/mean" not in summary
    chosen, rejected = implicit_rewards(os.path.join(out, "final"), sft, read_records(eval_file, "pair"), 0.5)
    assert summary["eval/accuracy"] == (chosen > rejected).float().mean().item()
    assert abs(summary["eval/margin"] - (chosen - rejected).mean().item()) < 1e-4
    assert abs(summary["eval/reward_chosen"] - chosen.mean().item()) < 1e-4
    assert abs(summary["eval/loss"] - (-F.logsigmoid(chosen - rejected)).mean().item()) < 1e-4
    assert summary["eval/margin"] != evals[0]["eval/margin"]  # the policy moved between the two evaluations
    # the held-out reference log-probs are cached beside the training ones, and reused by another loss
    cached = sorted(os.listdir(tmp_path / "cache"))
    assert len(cached) == 2
    again = run_preference(load_config(PreferenceConfig, None, [
        f"out_dir={tmp_path / 'ipo'}", f"model.path={sft}", f"data.train_file={data}/pairs.jsonl", "loss=ipo",
        f"data.eval_file={eval_file}", f"ref_cache_dir={tmp_path / 'cache'}", *RUN]))
    assert sorted(os.listdir(tmp_path / "cache")) == cached and "eval/loss" in again


def test_kto_reports_heldout_metrics_on_pairs_and_on_the_task_directory(base, tmp_path):
    root, data, sft = base
    out = str(tmp_path / "kto")
    eval_file = str(tmp_path / "heldout.jsonl")  # pairs: chosen desirable, rejected undesirable
    with open(os.path.join(data, "eval_pairs.jsonl")) as f, open(eval_file, "w") as g:
        g.writelines(f.readlines()[:8])
    summary = run_kto(load_config(KTOConfig, None, [
        f"out_dir={out}", f"model.path={sft}", f"data.train_file={data}/binary.jsonl", f"data.eval_file={eval_file}",
        f"ref_cache_dir={tmp_path / 'cache'}", *RUN]))
    assert summary["eval/pairs"] == 8 and summary["eval/examples"] == 16
    chosen, rejected = implicit_rewards(os.path.join(out, "final"), sft, read_records(eval_file, "pair"), 0.1)
    assert summary["eval/accuracy"] == (chosen > rejected).float().mean().item()
    assert abs(summary["eval/margin"] - (chosen - rejected).mean().item()) < 1e-4
    assert abs(summary["eval/reward_desirable"] - chosen.mean().item()) < 1e-4
    assert 0 <= summary["eval/label_accuracy"] <= 1 and summary["eval/loss"] > 0
    assert [r["step"] for r in rows(out) if "eval/loss" in r] == [2, 4]
    # no eval_file: the task data directory's eval_pairs.jsonl (8 pairs in tiny_sft's data)
    task_dir = run_kto(load_config(KTOConfig, None, [
        f"out_dir={tmp_path / 'kto2'}", f"model.path={sft}", f"data.dir={data}", "data.task=family_tree",
        f"ref_cache_dir={tmp_path / 'cache'}", *RUN]))
    assert task_dir["eval/pairs"] == 8 and "eval/accuracy" in task_dir


def fair_judge():
    """A loopback OpenAI-compatible judge preferring the longer response, in either position."""
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"]
            a = re.search(r"\[Response A\]\n(.*?)\n\[End of response A\]", text, re.S).group(1)
            b = re.search(r"\[Response B\]\n(.*?)\n\[End of response B\]", text, re.S).group(1)
            asked.append((a, b))
            verdict = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
            data = json.dumps({"choices": [{"message": {"content": verdict}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1", asked


def test_eval_on_a_prompts_file_with_a_reward_model_and_a_chat_judge(base, tmp_path, capsys):
    root, data, sft = base
    prompts_file = str(tmp_path / "mine.csv")
    prompts = [r.prompt for r in read_records(os.path.join(data, "eval_prompts.jsonl"), "sft")][:5]
    with open(prompts_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "note"])
        w.writerows([[p, "x"] for p in prompts + prompts[:2]])  # duplicates are evaluated once
    httpd, url, asked = fair_judge()
    out = str(tmp_path / "result.json")
    try:
        code = main(["eval", sft, "--prompts", prompts_file, "--reward", str(root / "rm"), "--reference", sft,
                     "--judge", "chat", "--judge-url", url, "--out", out, "n_prompts=50", "max_new_tokens=6",
                     "temperature=1.0"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0
    printed = capsys.readouterr().out
    assert "gold reward          none: these prompts come from a file, not a built-in task" in printed
    result = json.load(open(out))
    assert result["prompts"]["n"] == 5 and "gold" not in result and result["task"] is None
    # the reward-model score is the mean of the reward model's scores of the samples written beside it
    samples = [json.loads(x) for x in open(out.removesuffix(".json") + ".samples.jsonl")]
    assert [s["prompt"] for s in samples] == prompts
    score, _ = reward_source(str(root / "rm"), None, torch.device("cpu"), "auto")
    expected = score([s["prompt"] for s in samples], [s["completion"] for s in samples])
    assert abs(result["rm_score"]["mean"] - expected.mean().item()) < 1e-6
    assert result["rm_score"]["low"] <= result["rm_score"]["mean"] <= result["rm_score"]["high"]
    assert result["win_rate"]["judge"] == "chat:gpt-4o-mini" and len(asked) == 10  # both orders of 5 pairs
    # the model is its own reference here: same seed, same samples, so every pair is a tie (both orders
    # answer "tie") and the KL estimate is exactly 0
    assert all(a == b for a, b in asked) and result["per_prompt"]["win"] == [0.5] * 5
    assert result["win_rate"]["rate"] == 0.5 and result["kl_ref"]["mean"] == 0.0


def test_eval_without_task_or_prompts_or_with_a_gold_judge_on_a_file_is_one_line(base, tmp_path, capsys):
    root, data, sft = base
    assert main(["eval", sft]) == 2
    assert "eval needs --task (a built-in task) or --prompts FILE" in capsys.readouterr().err
    assert main(["eval", sft, "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert main(["eval", sft, "--prompts", os.path.join(data, "eval_prompts.jsonl"), "--judge", "gold"]) == 2
    err = capsys.readouterr().err
    assert "--judge gold needs --task" in err and "Traceback" not in err


def write(path, rows_):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows_)
    return str(path)


def test_load_prompts_reads_every_format(tmp_path):
    hh = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."}
    cases = {
        "plain.jsonl": ([{"prompt": "A?"}, {"prompt": "B?"}, {"prompt": "A?"}], ["A?", "B?"], [None, None]),
        "sft.jsonl": ([{"prompt": "A?", "completion": " a"}], ["A?"], [" a"]),
        "pairs.jsonl": ([{"prompt": "A?", "chosen": " a", "rejected": " b"}], ["A?"], [" a"]),
        "hh.jsonl": ([hh], ["\n\nHuman: Hi?\n\nAssistant:"], [" Hello."]),
        "tldr.jsonl": ([{"post": "My cat.", "summary": "cat"}], ["POST: My cat.\nTL;DR:"], [" cat"]),
        "se.jsonl": ([{"question": "Why?", "response_j": "Yes", "response_k": "No"}],
                     ["Question: Why?\n\nAnswer:"], [" Yes"]),
        "chat.jsonl": ([{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}]}],
                       ["\n\nHuman: Hi?\n\nAssistant:"], [" Yo."]),
        "chat_prompts.jsonl": ([{"prompt": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Why?"}]}],
                               ["\n\nSystem: Be brief.\n\nHuman: Why?\n\nAssistant:"], [None]),
    }
    for name, (objs, prompts, refs) in cases.items():
        records = load_prompts(write(tmp_path / name, objs))
        assert [r.prompt for r in records] == prompts, name
        assert [r.reference for r in records] == refs, name
    assert [r.prompt for r in load_prompts(str(tmp_path / "plain.jsonl"), max_records=1)] == ["A?"]


def test_heldout_metrics_of_the_untrained_policy_are_the_closed_form(base, tmp_path):
    """Before any step the policy is its reference: every implicit reward is 0, so the DPO loss is
    log 2, the margin 0 and no pair is ranked right (accuracy counts strict wins)."""
    from tinyrlhf.train.data import load_records
    from tinyrlhf.train.preference import heldout_pairs, offline_policy
    from tinyrlhf.train.reference import model_fingerprint
    root, data, sft = base
    cfg = load_config(PreferenceConfig, None, [f"model.path={sft}", f"data.dir={data}", "data.task=family_tree",
                                               f"ref_cache_dir={tmp_path / 'cache'}"])
    model, tok = offline_policy(cfg, None, torch.device("cpu"))
    _, evals, _ = load_records(cfg.data, "pair")
    metrics = heldout_pairs(cfg, model, tok, evals, torch.device("cpu"), True, model_fingerprint(model))()
    assert abs(metrics["eval/loss"] - 0.6931471805599453) < 1e-6
    assert metrics["eval/margin"] == 0.0 and metrics["eval/accuracy"] == 0.0 and metrics["eval/pairs"] == 8
