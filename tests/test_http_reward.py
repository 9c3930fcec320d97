"""Reward models over HTTP: `tinyrlhf serve` pointed at a reward run answers POST /v1/rewards with exactly
the local reward model's scores; bad requests are 4xx naming the field; PPO with reward=http://... logs the
same numbers as PPO with the reward run itself; and a reward server that dies mid-run stops the trainer with
one line and a checkpoint that the same command, the server back, continues to the same numbers.

The servers are real `tinyrlhf serve` processes on free loopback ports; the dying run is a real `tinyrlhf ppo`
process."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from conftest import tiny_sft
from serve_util import free_port, running
from tinyrlhf.cli import main
from tinyrlhf.config import PPOConfig, RewardConfig, RewardHTTPConfig, load_config
from tinyrlhf.data.collate import encode
from tinyrlhf.data.templates import render_reply, render_turns, template_of
from tinyrlhf.errors import ConfigError, RewardSourceError
from tinyrlhf.models import load_reward_model, score_encoded
from tinyrlhf.serve.app import create_app
from tinyrlhf.serve.config import EngineConfig, HTTPConfig
from tinyrlhf.serve.loader import load_served_reward
from tinyrlhf.train.ppo import run_ppo
from tinyrlhf.train.reward import run_reward
from tinyrlhf.train.reward_http import http_reward, rewards_url

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
SMALL = dict(n_train_prompts=60, n_eval_prompts=8, n_pairs=40, n_rankings=4, n_binary=16, n_eval_pairs=8)
PPO = ["train.max_steps=5", "train.batch_size=4", "train.warmup_steps=0", "train.lr=1e-3", "train.log_every=1",
       "train.save_every=0", "train.progress=false", "train.threads=1", "train.precision=fp32", "eval.n_prompts=0",
       "data.task=family_tree", "rollout.prompts_per_step=8", "rollout.max_new_tokens=8", "ppo.minibatch_size=4",
       "ppo.epochs=2", "ppo.early_stop_kl=0", "reward_http.retries=2", "reward_http.backoff_s=0.1",
       "reward_http.timeout_s=20"]
# what a run logs about its own speed and memory: differs between any two runs
UNTIMED = ("time/step", "episodes_per_s", "mem/rss_mib")


def env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


class Server:
    """`tinyrlhf serve ARGS --port PORT` as a child process, waited for until /health answers."""

    def __init__(self, args: list[str], log):
        self.args, self.log, self.port = args, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyrlhf", "serve", *self.args, "--port",
                                      str(self.port), "--threads", "1"], env=env(), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 90 s"
            time.sleep(0.1)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(root, data, SFT final/, reward run, server of the SFT model and the reward model)."""
    root = tmp_path_factory.mktemp("http_reward")
    data, sft = tiny_sft(root, steps=3, sizes=SMALL, extra=("train.threads=1",))
    rm = str(root / "rm")
    run_reward(load_config(RewardConfig, None, [f"out_dir={rm}", f"model.path={sft}", f"data.dir={data}",
                                                "data.task=family_tree", "train.max_steps=3", "train.batch_size=4",
                                                "train.progress=false", "train.threads=1", "normalize_samples=8"]))
    with open(root / "server.log", "w") as log:
        server = Server([f"policy={sft}", f"rm={rm}"], log)
        yield root, data, sft, rm, server
        server.kill()


def post(server, body, **kw):
    return httpx.post(server.url + "/v1/rewards", json=body, timeout=30, **kw)


PAIRS = [("- Cal(m): Ann(f), Bob(m)\nQ: siblings of Cal?\nA:", " Dee."), ("Q: who?\nA:", ""),
         ("", " Ann, Bob"), ("a long prompt " * 40, " and a long completion" * 30)]


def local_scores(rm_dir, prompts, completions, max_length, precision="fp32"):
    rm, tok = load_reward_model(os.path.join(rm_dir, "final"))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None
    return score_encoded(rm, encode(tok, prompts, completions, max_length), tok.pad_token_id, "cpu",
                         *([autocast] if autocast else [])).tolist()


@pytest.mark.parametrize("max_length,precision", [(None, "fp32"), (48, "fp32"), (64, "bf16")])
def test_rewards_equal_the_local_reward_models(base, max_length, precision):
    """Prompt strings scored as given, with the trainer's truncation (max_length 48 cuts the long pair) and
    precision: the same floats as the reward model loaded here (within 1e-5; measured: equal)."""
    _, _, _, rm, server = base
    body = {"model": "rm", "input": [{"prompt": p, "completion": c} for p, c in PAIRS], "precision": precision}
    if max_length:
        body["max_length"] = max_length
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "list" and out["model"] == "rm"
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3] and {d["object"] for d in out["data"]} == {"reward"}
    got = [d["reward"] for d in out["data"]]
    want = local_scores(rm, [p for p, _ in PAIRS], [c for _, c in PAIRS], max_length or 256, precision)
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5, (got, want)
    assert len(set(got)) == 4  # four different pairs, four different rewards: the head really reads them
    rm_model, tok = load_reward_model(os.path.join(rm, "final"))
    tokens = sum(len(p) + len(c) for p, c in encode(tok, [p for p, _ in PAIRS], [c for _, c in PAIRS],
                                                     max_length or 256))
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # the model may be left out when the server serves one reward model; the order of the pairs is kept
    del body["model"]
    body["input"] = body["input"][::-1]
    assert [d["reward"] for d in post(server, body).json()["data"]] == got[::-1]


def test_chat_messages_are_rendered_in_the_reward_models_template(base):
    """A messages prompt is rendered as training renders it: the model's template for the turns, the reply
    as training writes it (a leading space in hh, nothing added in plain)."""
    _, _, _, rm, server = base
    _, tok = load_reward_model(os.path.join(rm, "final"))
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "siblings of Cal?"}]
    name = template_of(tok) or "plain"
    prompt = render_turns(turns, name, tok)
    completion = render_reply(name, turns, prompt, tok, "Dee.")
    r = post(server, {"input": [{"prompt": turns, "completion": "Dee."}]})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["reward"] == pytest.approx(local_scores(rm, [prompt], [completion], 256)[0], abs=1e-5)


@pytest.mark.parametrize("body,status,param,words", [
    ({"model": "rm"}, 400, "input", "required"),
    ({"input": "a pair"}, 400, "input", "valid list"),
    ({"input": []}, 400, "input", "at least one"),
    ({"input": [{"prompt": "p", "completion": 3}]}, 400, "input[0].completion", "valid string"),
    ({"input": [{"prompt": "p"}]}, 400, "input[0].completion", "required"),
    ({"input": [{"prompt": [{"role": "robot", "content": "x"}], "completion": "c"}]}, 400, "input[0].prompt[0].role",
     "'system'"),
    ({"input": [{"prompt": [], "completion": "c"}]}, 400, "input[0].prompt", "at least one message"),
    ({"input": [{"prompt": "p", "completion": "c"}], "max_length": 100000}, 400, "max_length", "context (256)"),
    ({"input": [{"prompt": "p", "completion": "c"}], "max_length": 1}, 400, "max_length", "between 2"),
    ({"input": [{"prompt": "p", "completion": "c"}], "precision": "fp16"}, 400, "precision", "'fp32' or 'bf16'"),
    ({"input": [{"prompt": "p", "completion": "c"}] * 1025}, 400, "input", "at most 1024"),
    ({"model": "nope", "input": [{"prompt": "p", "completion": "c"}]}, 404, "model", "does not exist"),
    ({"model": "policy", "input": [{"prompt": "p", "completion": "c"}]}, 400, "model", "no reward head"),
])
def test_bad_reward_requests_are_4xx_naming_the_field(base, body, status, param, words):
    r = post(base[4], body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_one_server_serves_a_policy_and_a_reward_model(base):
    """The policy generates, the reward model scores; each refuses the other's endpoint; /v1/models says
    which is which; a body that is not JSON is a 4xx as on every route."""
    server = base[4]
    cards = {m["id"]: m["kind"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards == {"policy": "generate", "rm": "reward"}
    r = httpx.post(server.url + "/v1/completions", json={"model": "policy", "prompt": "Q:", "max_tokens": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1
    r = httpx.post(server.url + "/v1/completions", json={"model": "rm", "prompt": "Q:", "max_tokens": 2})
    assert r.status_code == 400 and "POST its pairs to /v1/rewards" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/rewards", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/rewards", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert httpx.get(server.url + "/health").json()["scoring"] == {"rm": 0}


def test_health_answers_while_a_big_batch_is_scored(base):
    """Scoring runs in the reward model's own thread: /health, polled while 128 long pairs are scored
    (it reports them as `scoring`), answers every time within 200 ms."""
    server = base[4]
    body = {"input": [{"prompt": "Q: siblings of Cal? " * 12, "completion": " Ann and Bob" * 12}] * 128}
    done = []
    worker = threading.Thread(target=lambda: done.append(post(server, body)), daemon=True)
    with httpx.Client() as client:
        client.get(server.url + "/health")
        worker.start()
        seen, latencies = 0, []
        while worker.is_alive():
            t0 = time.monotonic()
            health = client.get(server.url + "/health").json()
            latencies.append(time.monotonic() - t0)
            seen += health["scoring"]["rm"] == 1
            time.sleep(0.02)
    worker.join()
    assert done[0].status_code == 200 and len(done[0].json()["data"]) == 128
    print(f"/health while 128 pairs were scored: {len(latencies)} polls ({seen} saw them scoring), "
          f"max {max(latencies) * 1000:.1f} ms")
    assert seen >= 3, (seen, latencies)  # polled while the batch was being scored
    assert max(latencies) < 0.2, latencies


def test_a_request_not_scored_within_the_timeout_is_504(base):
    """The real app in this process with a 1 ms --timeout: 64 long pairs cannot be scored in time; the
    client retries a 504 and then says so in one line."""
    app = create_app([load_served_reward("rm", base[3])], EngineConfig(timeout_s=0.001))
    body = {"input": [{"prompt": "Q: siblings of Cal? " * 12, "completion": " Ann and Bob" * 12}] * 64}
    with running(app) as url:
        r = httpx.post(url + "/v1/rewards", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        with pytest.raises(RewardSourceError, match=r"no answer after 2 tries .* HTTP 504: not scored within"):
            http_reward(url, RewardHTTPConfig(retries=1, backoff_s=0), 256, "fp32")(["p" * 500] * 64, ["c" * 300] * 64)


def test_the_client_reads_urls_and_api_keys(base, monkeypatch):
    assert rewards_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1/rewards"
    assert rewards_url("http://h:1/v1/") == "http://h:1/v1/rewards"
    assert rewards_url("https://h/v1/rewards") == "https://h/v1/rewards"
    for bad in ("http://", "http://h:x", "http://h:1/v1/rewards?model=rm", "ftp://h"):
        with pytest.raises(ConfigError):
            rewards_url(bad)
    server = base[4]
    score = http_reward(server.url, RewardHTTPConfig(model="rm", batch_size=3), 256, "fp32")
    prompts, completions = [p for p, _ in PAIRS], [c for _, c in PAIRS]
    assert score(prompts, completions) == pytest.approx(local_scores(base[3], prompts, completions, 256), abs=1e-5)
    # a refused request (here: a generating model) is one line at once, with the server's message, no retries
    t0 = time.monotonic()
    with pytest.raises(RewardSourceError, match=r"refused the request \(HTTP 400: the model 'policy'"):
        http_reward(server.url, RewardHTTPConfig(model="policy", backoff_s=5), 256, "fp32")(["p"], ["c"])
    assert time.monotonic() - t0 < 4


def test_the_api_key_comes_from_the_environment(base, monkeypatch):
    """The real app with an API key (in this process, on a loopback port): the key is read from the
    variable reward_http.api_key_env names; without it the server's 401 is one line."""
    rm = base[3]
    app = create_app([load_served_reward("rm", rm)], EngineConfig(), HTTPConfig(api_key="s3cret-key"))
    with running(app) as url:
        monkeypatch.delenv("TINYRLHF_API_KEY", raising=False)
        with pytest.raises(RewardSourceError, match="HTTP 401"):
            http_reward(url, None, 256, "fp32")(["p"], ["c"])
        monkeypatch.setenv("MY_RM_KEY", "s3cret-key")
        got = http_reward(url, RewardHTTPConfig(api_key_env="MY_RM_KEY"), 256, "fp32")(["p"], ["c"])
        assert got == pytest.approx(local_scores(rm, ["p"], ["c"], 256), abs=1e-5)


def test_no_server_is_one_line_after_the_retries():
    """Nothing listens: connection refused, retried twice after 0.1 s and 0.2 s, then one line."""
    sleeps = []
    cfg = RewardHTTPConfig(retries=2, backoff_s=0.1)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RewardSourceError) as e:
        http_reward(url, cfg, 256, "fp32", sleep=sleeps.append)(["p"], ["c"])
    assert sleeps == [0.1, 0.2]
    msg = str(e.value)
    assert "\n" not in msg and f"{url}/v1/rewards" in msg and "3 tries" in msg and "connection refused" in msg


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in UNTIMED} for line in f]


def same_numbers(a: list[dict], b: list[dict]) -> float:
    """The largest difference between two runs' logged numbers (same steps, same keys)."""
    assert [r["step"] for r in a] == [r["step"] for r in b] and [set(r) for r in a] == [set(r) for r in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)


@pytest.fixture(scope="module")
def local_ppo(base):
    """5 PPO steps with the reward run itself as the reward source: the numbers every HTTP run must give."""
    root, data, sft, rm, _ = base
    out = root / "ppo-local"
    run_ppo(load_config(PPOConfig, None, [f"out_dir={out}", f"model.path={sft}", f"data.dir={data}", f"reward={rm}",
                                          *PPO]))
    return rows(out)


def test_ppo_against_the_served_reward_model_equals_ppo_against_the_local_one(base, local_ppo):
    root, data, sft, _, server = base
    out = root / "ppo-http"
    summary = run_ppo(load_config(PPOConfig, None, [f"out_dir={out}", f"model.path={sft}", f"data.dir={data}",
                                                    f"reward={server.url}", *PPO]))
    assert summary["finished"] and summary["steps"] == 5
    got = rows(out)
    diff = same_numbers(got, local_ppo)
    print(f"PPO over HTTP vs local reward model: largest difference over {len(got)} rows: {diff:.2e}")
    assert diff <= 1e-5
    assert len({r["objective/scores"] for r in got}) == 5 and got[-1]["loss/policy"] != 0


def test_a_reward_server_that_dies_stops_the_run_with_one_line_and_a_checkpoint(base, local_ppo, capsys):
    """The server process is killed (SIGKILL) once the run has logged its second step: the trainer (the CLI)
    stops with one line naming the URL, exit status 2, the checkpoint of the last finished step written;
    with the server back on its port, the same command continues and ends with the numbers of an
    uninterrupted run. (Last in this file: it kills the module's server.)"""
    root, data, sft, rm, server = base
    out = root / "ppo-dies"
    cmd = ["ppo", f"out_dir={out}", f"model.path={sft}", f"data.dir={data}", f"reward={server.url}", *PPO]
    metrics = out / "metrics.jsonl"

    def kill_after_two_steps():
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.005)
        server.kill()
    killer = threading.Thread(target=kill_after_two_steps, daemon=True)
    killer.start()
    capsys.readouterr()
    assert main(cmd) == 2
    killer.join(10)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    done = len(rows(out))
    assert 2 <= done < 5
    assert lines[0].startswith(f"error: reward '{server.url}/v1/rewards': no answer after 3 tries"), lines[0]
    assert "connection refused" in lines[0]
    assert f"ppo stopped in step {done + 1} of 5, the checkpoint of step {done} is kept" in lines[0], lines[0]
    assert torch.load(out / "checkpoints" / "last" / "state.pt", weights_only=False)["step"] == done
    assert not (out / "final").exists()

    server.start()  # back on the same port: the same command continues
    assert main(cmd) == 0, capsys.readouterr().err[-3000:]
    assert (out / "final" / "model.safetensors").exists()
    diff = same_numbers(rows(out), local_ppo)
    print(f"killed after step {done}, resumed: largest difference to the uninterrupted run {diff:.2e}")
    assert diff <= 1e-5
