"""docs/guides/own-data.md, run as written: every `tinyrlhf` command of its fenced bash blocks, in order, on
small files this test writes (a gpt2-tiny preset, no data.task), with only speed settings added. SFT learns
from plain questions and the pairs are Anthropic-HH transcripts, so the prompt format must stay the SFT
model's through every later stage, eval, serve and label. `serve` and `label` run as real processes on a
free port; the labels are submitted through the label app's HTTP API, exported and trained on."""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tinyrlhf.cli import main
from tinyrlhf.data.templates import template_of
from tinyrlhf.models import load_tokenizer

GUIDE = os.path.join(os.path.dirname(__file__), "..", "docs", "guides", "own-data.md")
SRC = os.path.join(os.path.dirname(__file__), "..", "src")
FAST = ["train.threads=1", "train.progress=false"]
# speed only: what each command gets on top of the guide's words (first word(s) of the command -> settings)
SPEED = {"sft": FAST, "reward": FAST + ["train.batch_size=16"],
         "dpo": FAST + ["train.max_steps=10", "train.batch_size=8"],
         "kto": FAST + ["train.max_steps=10", "train.batch_size=8"],
         "ppo": FAST + ["train.max_steps=3", "rollout.prompts_per_step=8", "ppo.minibatch_size=8"],
         "eval": [], "export": [], "feedback": []}
ANIMALS = ["cat", "dog", "horse", "cow", "goat", "duck", "owl", "fox", "bear", "frog"]


def guide_commands() -> list[str]:
    """The `tinyrlhf ...` commands of the guide's ```bash blocks, continuation lines joined, in order."""
    text = open(GUIDE, encoding="utf-8").read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd.startswith("tinyrlhf "):
                out.append(" ".join(cmd.split()))
    return out


def question(rng: random.Random) -> tuple[str, str]:
    a = rng.choice(ANIMALS)
    kind = rng.randrange(3)
    if kind == 0:
        return f"What does a {a} eat?", f"A {a} eats {rng.choice(['seeds', 'grass', 'fish', 'nuts'])}."
    if kind == 1:
        return f"What colour is the {a}?", f"The {a} is {rng.choice(['red', 'brown', 'grey', 'white'])}."
    return f"Where does the {a} sleep?", f"The {a} sleeps in the {rng.choice(['barn', 'nest', 'den'])}."


def write_data(root):
    """The guide's data/: demonstrations under their own names (question, answer), HH pairs, prompts with
    two repeats."""
    rng = random.Random(0)
    os.makedirs(root / "data")

    def lines(name, rows):
        with open(root / "data" / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def qa(n):
        return [{"question": q, "answer": " " + a} for q, a in (question(rng) for _ in range(n))]

    def hh(n):
        rows = []
        for _ in range(n):
            q, a = question(rng)
            bad = rng.choice(["I don't know.", "No.", "The the the."])
            rows.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
        return rows
    lines("qa.jsonl", qa(40))
    lines("qa_eval.jsonl", qa(8))
    lines("hh_pairs.jsonl", hh(48))
    lines("hh_pairs_eval.jsonl", hh(8))
    prompts = list(dict.fromkeys(question(rng)[0] for _ in range(40)))[:8]
    lines("prompts.jsonl", [{"prompt": p} for p in prompts + prompts[:2]])
    return prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: str, port_flag: str, root):
    """A long-running guide command (serve, label) as a real process on a free port; returns (process, port)."""
    port = free_port()
    argv = shlex.split(cmd)[1:]
    argv[argv.index(port_flag) + 1] = str(port)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", *argv], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, port


def read_until(proc, needle: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"never printed {needle!r}:\n{''.join(lines)}")


def stop(proc):
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=60)
    return out


def serve_and_chat(cmd: str, root) -> str:
    proc, port = start(cmd, "--port", root)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.3)
        names = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        assert names == ["own-dpo", "sft"]
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "own-dpo", "messages": [{"role": "user", "content": "What does a fox eat?"}], "max_tokens": 8})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    finally:
        stop(proc)


def label_through_the_api(cmd: str, root) -> tuple[int, list[str]]:
    """Run the guide's label command, answer every item of every labeller through the HTTP API (A or B),
    Ctrl-C it; returns (labels stored, the prompts the labellers saw)."""
    proc, port = start(cmd, "--port", root)
    try:
        lines = read_until(proc, "export: tinyrlhf feedback export")
        assert re.search(r"sampling \d+ outputs to label", "".join(lines))  # progress while it samples
        tokens = dict(re.findall(r"^\s+(\w+)\s+http://\S+/\?token=(\S+)$", "".join(lines), re.M))
        assert sorted(tokens) == ["alice", "bob"], "".join(lines)
        url, stored, seen = f"http://127.0.0.1:{port}", 0, []
        for k, (name, token) in enumerate(sorted(tokens.items())):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                assert c.get("/api/me").json()["labeller"] == name
                while (item := c.get("/api/next").json()["item"]) is not None:
                    seen.append(item["prompt"])
                    body = {"item_id": item["item_id"], "submit_id": f"{name}-{item['item_id']:06d}",
                            "choice": "AB"[(item["item_id"] + k) % 2]}
                    r = c.post("/api/submit", json=body)
                    assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
                    assert c.post("/api/submit", json=body).json()["duplicate"] is True  # a double click
                    stored += 1
    finally:
        out = stop(proc)
    assert f"stopped: {stored} labels" in out, out
    return stored, seen


def test_the_guide_runs_end_to_end_with_one_prompt_format(tmp_path, monkeypatch, capfd):
    commands = guide_commands()
    words = [" ".join(c.split()[1:3]) if c.split()[1] == "feedback" else c.split()[1] for c in commands]
    assert words == ["sft", "dpo", "kto", "reward", "ppo", "eval", "export", "serve", "label", "feedback export",
                     "dpo"], words
    assert not any("data.task" in c or "model.preset" in c for c in commands)  # the preset, your data only
    prompts = write_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    t0, times, out = time.monotonic(), {}, {}
    for cmd in commands:
        t = time.monotonic()
        stage = cmd.split()[1]
        if stage == "serve":
            answer = serve_and_chat(cmd, tmp_path)
            assert isinstance(answer, str)
        elif stage == "label":
            stored, seen = label_through_the_api(cmd, tmp_path)
            assert stored >= 8 and set(seen) == set(prompts)  # the prompts as written: plain, like the models'
        else:
            capfd.readouterr()
            code = main(shlex.split(cmd)[1:] + SPEED[stage])
            o, e = capfd.readouterr()
            assert code == 0, f"{cmd}\n{o}\n{e}"
            out[cmd] = (o, e)
        times[cmd] = time.monotonic() - t
    print("\n".join(f"{v:6.1f} s  {k}" for k, v in times.items()), f"\n{time.monotonic() - t0:.1f} s in all")
    sft, dpo, kto, rm, ppo, evaluate, export, _, _, fb, human = commands

    # 1. own columns, a preset whose tokenizer learned these files, the run length printed
    assert "sft: 40 examples" in out[sft][0] and "(train.epochs=20)" in out[sft][0]
    vocab = load_tokenizer("runs/own/sft/final").get_vocab()
    assert {"Ġfox", "Ġsleep", "Ġcolour"} <= set(vocab)  # learned from these files, not a task's text
    # 3. one prompt format: SFT's (plain) in every model; the HH pairs are rendered in it, with one warning
    for run in ("sft", "dpo", "kto-lora", "rm", "ppo", "dpo-human"):
        assert template_of(load_tokenizer(f"runs/own/{run}/final")) == "plain", run
    for cmd in (dpo, kto, rm):
        warned = [x for x in out[cmd][1].splitlines() if "prompt format" in x]
        assert len(warned) == 1 and "'\\n\\nHuman: " in warned[0] and "uses the plain format" in warned[0], out[cmd]
    assert "prompt format" not in out[human][1]  # the labels were gathered in the SFT model's format
    # 6. eval says how many prompts it used and why; its samples are plain questions
    assert "8 prompts (the file holds 10: 2 repeat an earlier prompt and were dropped)" in out[evaluate][0]
    assert re.search(r"max_new_tokens \d+ \(from the \d+ completions of data/hh_pairs.jsonl", out[evaluate][0])
    samples = [json.loads(x) for x in open("runs/own/dpo/eval-file-prompts.samples.jsonl")]
    assert [s["prompt"] for s in samples] == prompts
    card = open("exported/own-dpo/README.md").read()
    assert "Prompt format: plain" in card and "on data/prompts.jsonl (8 prompts" in card
    # the labels, exported and trained on
    assert sum(1 for _ in open("runs/own/human/pairs.jsonl")) >= 8
    assert json.load(open("runs/own/dpo-human/summary.json"))["finished"] is True
