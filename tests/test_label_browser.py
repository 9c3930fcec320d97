"""The labelling page in a real headless Chromium (Debian's chromium + chromium-driver through Selenium, as
test_serve_browser.py does): a scripted person labels 20 items in each mode (pair, ranking, binary, arena),
half by clicks and half by keys, some with a comment; the export holds exactly what was clicked; outputs
and prompts containing HTML show as characters and run nothing."""
from __future__ import annotations

import os
import random
import shutil

import pytest

from serve_util import HTML, html_model_dir, running, tiny_model_dir
from serve_util import CHROMEDRIVER, CHROMIUM, needs_browser
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.data.formats import load_binary, load_preferences
from tinyrlhf.data.records import read_records
from tinyrlhf.feedback.app import create_label_app
from tinyrlhf.feedback.export import export_labels
from tinyrlhf.feedback.sources import Models
from tinyrlhf.feedback.store import Store

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_browser]
N = 20  # items per mode


def _items() -> list[dict]:
    items = []
    for i in range(N):
        evil = HTML if i == 0 else ""  # the first item of each kind carries markup in prompt and output
        items.append({"prompt": f"pair {i}{evil}", "kind": "pair", "labellers": ["pairer"],
                      "outputs": [{"model": "m1", "text": f" left {i}{evil}"}, {"model": "m2", "text": f" right {i}"}]})
        items.append({"prompt": f"rank {i}", "kind": "ranking", "labellers": ["ranker"],
                      "outputs": [{"model": m, "text": f" {m} says {i}{evil}"} for m in ("m1", "m2", "m3")]})
        items.append({"prompt": f"thumb {i}", "kind": "binary", "labellers": ["thumber"],
                      "outputs": [{"model": "m1", "text": f" thumb text {i}{evil}"}]})
    return items


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("label-browser")
    store = Store(str(root / "fb.db"))
    tokens = store.add_labellers(["pairer", "ranker", "thumber", "arena"])
    store.add_items(_items(), "browser")
    models = Models([f"tiny={tiny_model_dir(root / 'tiny')}", f"html={html_model_dir(root / 'html')}"])
    plain = create_label_app(store, "pair", seed=0)
    arena = create_label_app(store, "arena", models=models, max_new_tokens=3, seed=0)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    with running(plain) as url, running(arena) as arena_url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(30)
            yield {"driver": driver, "url": url, "arena_url": arena_url, "tokens": tokens, "root": root,
                   "store": store}
        finally:
            driver.quit()


def _wait_state(driver, states, not_item=None):
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        s = d.find_element("tag name", "body").get_attribute("data-state")
        if s not in states:
            return False
        return not_item is None or d.find_element("id", "item").get_attribute("data-item-id") != not_item
    WebDriverWait(driver, 30, poll_frequency=0.02).until(ready)
    return driver.find_element("tag name", "body").get_attribute("data-state")


def _shown(driver) -> tuple[str, str, list[str]]:
    """(item id, prompt, output texts in shown order) as the page shows them."""
    item = driver.find_element("id", "item")
    kind = item.get_attribute("data-kind")
    shown = {k: driver.find_element("id", f"controls-{k}").is_displayed() for k in ("pair", "ranking", "binary")}
    assert shown == {k: k == kind for k in shown}  # only this kind's buttons
    texts = [e.text for e in driver.find_elements("css selector", "#outputs .output .text")]
    return item.get_attribute("data-item-id"), driver.find_element("id", "prompt").text, texts


def _open(s, who: str):
    s["driver"].get(f"{s['arena_url'] if who == 'arena' else s['url']}/?token={s['tokens'][who]}")
    return _wait_state(s["driver"], ("ready", "arena"))


def _comment(driver, k: int, body) -> str:
    """Every third item: press c, type a comment, Esc back to the shortcuts."""
    if k % 3:
        return ""
    text = f"note {k} <b>x</b>"
    body.send_keys("c")
    driver.switch_to.active_element.send_keys(text)
    from selenium.webdriver.common.keys import Keys
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    return text


def _no_markup(driver):
    from selenium.webdriver.common.by import By
    main = driver.find_element(By.TAG_NAME, "main")
    assert main.find_elements(By.TAG_NAME, "img") == [] and main.find_elements(By.TAG_NAME, "script") == []
    assert main.find_elements(By.TAG_NAME, "b") == []
    assert driver.execute_script("return window.__xss === undefined")


def _label_pairs(s, who: str, arena: bool) -> list[dict]:
    """Label N pair items (arena: ask N prompts first); returns what was done, as the person saw it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = s["driver"]
    state = _open(s, who)
    body = d.find_element(By.TAG_NAME, "body")
    done, prev = [], None
    for k in range(N):
        if arena:
            assert state == "arena"
            box = d.find_element(By.ID, "arena-prompt")
            box.send_keys(f"question {k} <i>?</i>")
            if k % 2:
                box.send_keys(Keys.CONTROL, Keys.ENTER)
            else:
                d.find_element(By.ID, "arena-send").click()
            _wait_state(d, ("ready",), prev)
        item_id, prompt, texts = _shown(d)
        if k == 0:
            assert (HTML in prompt or HTML in texts[0] + texts[1]) and len(texts) == 2
            _no_markup(d)
            d.save_screenshot(str(s["root"] / f"label-{who}.png"))
        choice = ["A", "B", "tie", "both_bad"][k % 4]
        comment = _comment(d, k, body)
        if k % 2:
            body.send_keys({"A": "a", "B": "b", "tie": "t", "both_bad": "x"}[choice])
        else:
            d.find_element(By.ID, f"choice-{choice}").click()
        done.append({"item": int(item_id), "prompt": prompt, "texts": texts, "choice": choice, "comment": comment})
        state = _wait_state(d, ("ready", "empty", "arena"), item_id)
        prev = item_id
    assert state == ("arena" if arena else "empty")
    _no_markup(d)
    return done


def _check_pairs_export(s, who: str, done: list[dict], batch: str, out_name: str) -> dict:
    out = s["root"] / out_name
    summary = export_labels(str(s["root"] / "fb.db"), str(out), batch)
    pairs = [p for p in load_preferences(out / "pairs.jsonl") if p.meta["labeller"] == who]
    want = [(x["prompt"], x["texts"]["AB".index(x["choice"])], x["texts"][1 - "AB".index(x["choice"])], x["comment"])
            for x in done if x["choice"] in "AB"]
    assert [(p.prompt, p.chosen.strip(), p.rejected.strip(), p.meta.get("comment", "")) for p in pairs] == \
        [(a, b.strip(), c.strip(), m) for a, b, c, m in want]
    bad = [b for b in load_binary(out / "binary.jsonl") if b.meta["labeller"] == who]
    want_bad = sorted(t.strip() for x in done if x["choice"] == "both_bad" for t in x["texts"])
    assert sorted(b.completion.strip() for b in bad) == want_bad and not any(b.label for b in bad)
    assert summary["pair_choices"] == {c: sum(x["choice"] == c for x in done) for c in ("A", "B", "tie", "both_bad")}
    return summary


def test_pair_mode_by_clicks_and_keys(session):
    done = _label_pairs(session, "pairer", arena=False)
    summary = _check_pairs_export(session, "pairer", done, "browser", "export-pair")
    assert summary["per_labeller"]["pairer"] == N
    # the stored shown order is what the page showed: position p held output shown_order[p]
    for x in done:
        lab = next(lab for lab in session["store"].labels("browser") if lab["item_id"] == x["item"])
        assert [lab["outputs"][i]["text"].strip() for i in lab["shown_order"]] == [t.strip() for t in x["texts"]]


def test_arena_mode_own_prompts(session):
    done = _label_pairs(session, "arena", arena=True)
    summary = _check_pairs_export(session, "arena", done, "arena", "export-arena")
    assert [x["prompt"] for x in done] == [f"question {k} <i>?</i>" for k in range(N)]
    labels = session["store"].labels("arena")
    assert len(labels) == N and all({o["model"] for o in lab["outputs"]} == {"tiny", "html"} for lab in labels)
    # every arena answer of the html model is its markup, shown as text; Elo/BT computed from the votes
    assert all(HTML in "".join(x["texts"]) for x in done)
    assert set(summary["ratings"]["elo"]) == {"tiny", "html"}


def test_ranking_mode_by_clicks_and_keys(session):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d, rng = session["driver"], random.Random(0)
    _open(session, "ranker")
    body = d.find_element(By.TAG_NAME, "body")
    done = []
    for k in range(N):
        item_id, prompt, texts = _shown(d)
        if k == 0:
            assert any(HTML in t for t in texts)
            _no_markup(d)
        order = rng.sample(range(3), 3)
        comment = _comment(d, k, body)
        if k % 2:
            body.send_keys(str(order[0] + 1))
            body.send_keys(Keys.BACKSPACE)  # start over once: the order is reset
            body.send_keys(str(order[0] + 1), str(order[1] + 1))  # the third is implied
            assert d.find_element(By.ID, "rank-order").text == " > ".join(str(p + 1) for p in order)
            body.send_keys(Keys.ENTER)
        else:
            boxes = d.find_elements(By.CSS_SELECTOR, "#outputs .output")
            boxes[order[0]].click()
            boxes[order[1]].click()
            d.find_element(By.ID, "rank-submit").click()
        done.append((prompt, [texts[p].strip() for p in order], comment))
        _wait_state(d, ("ready", "empty"), item_id)
    assert _wait_state(d, ("empty",)) == "empty"
    out = session["root"] / "export-rank"
    export_labels(str(session["root"] / "fb.db"), str(out), "browser")
    got = [r for r in read_records(str(out / "rankings.jsonl"), "ranking") if r.meta["labeller"] == "ranker"]
    assert [(r.prompt, [c.strip() for c in r.completions], r.meta.get("comment", "")) for r in got] == done


def test_binary_mode_by_clicks_and_keys(session):
    from selenium.webdriver.common.by import By

    d = session["driver"]
    _open(session, "thumber")
    body = d.find_element(By.TAG_NAME, "body")
    done = []
    for k in range(N):
        item_id, prompt, texts = _shown(d)
        if k == 0:
            assert [t.strip() for t in texts] == [f"thumb text 0{HTML}"]  # the characters, markup included
            _no_markup(d)
        up = k % 4 < 2
        comment = _comment(d, k, body)
        if k % 2:
            body.send_keys("u" if up else "d")
        else:
            d.find_element(By.ID, "thumb-up" if up else "thumb-down").click()
        done.append((prompt, texts[0].strip(), up, comment))
        _wait_state(d, ("ready", "empty"), item_id)
    assert d.find_element(By.ID, "count").text == str(N)
    out = session["root"] / "export-binary"
    export_labels(str(session["root"] / "fb.db"), str(out), "browser")
    got = [b for b in load_binary(out / "binary.jsonl") if b.meta["labeller"] == "thumber"]
    assert [(b.prompt, b.completion.strip(), b.label, b.meta.get("comment", "")) for b in got] == done
    if os.environ.get("TINYRLHF_SCREENSHOTS"):  # for a person to look at: TINYRLHF_SCREENSHOTS=DIR
        os.makedirs(os.environ["TINYRLHF_SCREENSHOTS"], exist_ok=True)
        for png in session["root"].glob("label-*.png"):
            shutil.copy(png, os.environ["TINYRLHF_SCREENSHOTS"])


def test_wrong_token_shows_an_error(session):
    d = session["driver"]
    d.get(session["url"] + "/?token=wrong")
    assert _wait_state(d, ("error",)) == "error"
    assert d.find_element("id", "status").text == "unknown labeller token"
    d.get(session["url"] + "/")
    assert _wait_state(d, ("error",)) == "error" and "missing token" in d.find_element("id", "status").text
