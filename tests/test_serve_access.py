"""Who may talk to `tinyrlhf serve`, against real uvicorn servers on loopback: the API key on every /v1 route
(401 without it or with a wrong one; /health, /metrics and the chat page stay open), the Host check against
DNS rebinding (421), CORS only for the origins named, the page's Content-Security-Policy and nosniff, and the
command line refusing a non-loopback --host without a key."""
from __future__ import annotations

import re
import socket

import httpx
import pytest

from serve_util import make_app, running, tiny_model_dir
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.serve.config import HTTPConfig

pytestmark = pytest.mark.usefixtures("one_thread")
KEY = "s3cret-key_1"
ORIGIN = "http://localhost:3000"
COMPLETION = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
API = [("GET", "/v1/models", None), ("GET", "/v1/models/tiny", None), ("POST", "/v1/completions", COMPLETION),
       ("POST", "/v1/chat/completions", CHAT)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("serve-access") / "tiny")


@pytest.fixture(scope="module")
def keyed(model_dir):
    """API key and one CORS origin; the Host check on (a loopback bind)."""
    with running(make_app({"tiny": model_dir}, HTTPConfig(api_key=KEY, cors_origins=(ORIGIN,)))) as url:
        yield url


@pytest.fixture(scope="module")
def open_server(model_dir):
    """As `tinyrlhf serve` on 127.0.0.1 with no option: no key, no CORS, the Host check on."""
    with running(make_app({"tiny": model_dir})) as url:
        yield url


def _call(url, method, path, body, headers=None):
    return httpx.request(method, url + path, json=body, headers=headers or {}, timeout=60)


def _error(r, status, code):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]
    assert r.headers["x-content-type-options"] == "nosniff"
    return err


AUTH_BAD = [None, "Bearer wrong", f"Bearer {KEY}x", f"Basic {KEY}", KEY, "Bearer", f"Bearer {KEY[:-1]}"]


@pytest.mark.parametrize("auth", AUTH_BAD, ids=[f"auth{i}" for i in range(len(AUTH_BAD))])
@pytest.mark.parametrize("method,path,body", API, ids=[p for _, p, _ in API])
def test_every_v1_route_needs_the_key(keyed, method, path, body, auth):
    r = _call(keyed, method, path, body, {"authorization": auth} if auth else {})
    err = _error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert ("needs an API key" if auth is None else "not valid") in err["message"]
    assert KEY not in r.text


@pytest.mark.parametrize("method,path,body", API, ids=[p for _, p, _ in API])
def test_the_key_opens_every_v1_route(keyed, method, path, body):
    for auth in (f"Bearer {KEY}", f"bearer {KEY}"):
        assert _call(keyed, method, path, body, {"authorization": auth}).status_code == 200


def test_unknown_and_encoded_v1_paths_need_the_key_too(keyed):
    _error(httpx.get(keyed + "/v1/nothing"), 401, "invalid_api_key")
    _error(httpx.get(keyed + "/%761/models"), 401, "invalid_api_key")  # the router sees /v1/models
    assert httpx.get(keyed + "/v1/nothing", headers={"authorization": f"Bearer {KEY}"}).status_code == 404


def test_health_metrics_and_page_stay_open(keyed):
    for path in ("/health", "/metrics", "/", "/static/chat.js", "/static/chat.css"):
        assert httpx.get(keyed + path).status_code == 200, path


def test_openai_client_with_and_without_the_key(keyed):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens <= 2
    bad = openai.OpenAI(base_url=keyed + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


HOSTS_OK = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}", "localhost", "127.0.0.1:9"]
HOSTS_BAD = ["evil.example:{port}", "evil.example", "127.0.0.1.evil.example:{port}", "localhost.evil.example",
             "[::2]:{port}", "0.0.0.0:{port}", "192.168.1.10:{port}", ""]


@pytest.mark.parametrize("host", HOSTS_BAD)
def test_host_check_refuses_other_names(open_server, host):
    port = open_server.rsplit(":", 1)[1]
    for method, path, body in [("GET", "/health", None), ("GET", "/", None)] + API[2:]:
        r = _call(open_server, method, path, body, {"host": host.format(port=port)})
        _error(r, 421, "misdirected_request")


@pytest.mark.parametrize("host", HOSTS_OK)
def test_host_check_accepts_loopback_names(open_server, host):
    port = open_server.rsplit(":", 1)[1]
    assert _call(open_server, "POST", "/v1/completions", COMPLETION,
                 {"host": host.format(port=port)}).status_code == 200


def test_host_check_refuses_a_request_without_host(open_server):
    port = int(open_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 421"), reply[:200]


def test_without_host_check_any_name_is_served(model_dir):
    """A non-loopback bind (`serve` sets check_host=False there): the API key is the guard, not the name."""
    with running(make_app({"tiny": model_dir}, HTTPConfig(check_host=False))) as url:
        assert httpx.get(url + "/health", headers={"host": "my-server.lan:8000"}).status_code == 200


def test_no_cors_without_cors_origin(open_server):
    r = httpx.get(open_server + "/v1/models", headers={"origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(open_server + "/v1/completions", headers={
        "origin": "http://evil.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert pre.status_code >= 400 and not any(h.startswith("access-control-") for h in pre.headers)


def test_cors_only_for_the_named_origin(keyed):
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.get(keyed + "/v1/models", headers=auth | {"origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(keyed + "/v1/models", headers=auth | {"origin": "http://localhost:3001"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}
    r = httpx.options(keyed + "/v1/chat/completions", headers=pre | {"origin": ORIGIN})  # preflights carry no key
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.options(keyed + "/v1/chat/completions", headers=pre | {"origin": "http://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # the allowed page can read a 401 (the key check sits inside CORS)
    r = httpx.get(keyed + "/v1/models", headers={"origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN


def test_page_headers_and_no_inline_script(open_server):
    r = httpx.get(open_server + "/")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", r.text, re.S)
    assert scripts == [(' src="/static/chat.js"', "")]  # the page's only script is its own file
    assert not re.search(r"\son\w+\s*=", r.text)  # no inline event handlers
    for path in ("/static/chat.js", "/v1/models", "/v1/nothing"):
        assert httpx.get(open_server + path).headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ the command line

def _serve_cli(args, capsys, monkeypatch, env_key=None):
    """main(["serve", ...]) with the server replaced: (exit code, stderr, the ServeConfig it would run)."""
    import tinyrlhf.serve.server as server
    from tinyrlhf.cli import main
    from tinyrlhf.serve.config import check_serve

    seen = {}

    def fake_serve(cfg, log=print):
        seen["cfg"] = check_serve(cfg)
        return 0
    monkeypatch.setattr(server, "serve", fake_serve)
    if env_key is None:
        monkeypatch.delenv("TINYRLHF_API_KEY", raising=False)
    else:
        monkeypatch.setenv("TINYRLHF_API_KEY", env_key)
    code = main(["serve"] + args)
    return code, capsys.readouterr().err, seen.get("cfg")


def test_cli_refuses_a_public_host_without_a_key(model_dir, capsys, monkeypatch):
    for host in ("0.0.0.0", "192.168.1.10", "::", "my-host.lan"):
        code, err, _ = _serve_cli([model_dir, "--host", host], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: --host {host} can be reached from other machines") and "--no-auth" in err


def test_cli_access_options(model_dir, capsys, monkeypatch):
    code, _, cfg = _serve_cli([model_dir, "--host", "0.0.0.0", "--no-auth"], capsys, monkeypatch)
    assert code == 0 and cfg.no_auth and cfg.http.api_key is None
    code, _, cfg = _serve_cli([model_dir, "--host", "0.0.0.0"], capsys, monkeypatch, env_key="from-env")
    assert code == 0 and cfg.http.api_key == "from-env"
    code, _, cfg = _serve_cli([model_dir, "--api-key", "k1", "--cors-origin", ORIGIN, "--max-body-bytes", "4096"],
                              capsys, monkeypatch, env_key="from-env")
    assert code == 0 and cfg.http.api_key == "k1" and cfg.http.cors_origins == (ORIGIN,)
    assert cfg.http.max_body_bytes == 4096
    for args, env, message in [
            (["--host", "0.0.0.0", "--no-auth", "--api-key", "k"], None, "contradict"),
            (["--no-auth"], "from-env", "contradict"),
            (["--cors-origin", "*"], None, "'*' is not accepted"),
            (["--cors-origin", "http://x.example/path"], None, "--cors-origin"),
            (["--api-key", "has space"], None, "printable ASCII"),
            (["--max-body-bytes", "10"], None, "--max-body-bytes must be >= 1024")]:
        code, err, _ = _serve_cli([model_dir] + args, capsys, monkeypatch, env_key=env)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
