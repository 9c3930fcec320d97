"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium with
an explicit driver path, so Selenium Manager never downloads anything): it lists the models, streams an
answer, and shows model text literally even when it is HTML; it runs under its Content-Security-Policy with
no violation, and against a server started with an API key it asks for the key and then works."""
from __future__ import annotations

import os
import shutil

import pytest

from serve_util import HTML, html_model_dir, make_app, running, tiny_model_dir
from serve_util import CHROMEDRIVER, CHROMIUM, needs_browser
from serve_util import one_thread  # noqa: F401 (the module's pytestmark fixture)
from tinyrlhf.serve.config import HTTPConfig

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_browser]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("serve-browser")
    app = make_app({"tiny": tiny_model_dir(root / "tiny"), "html": html_model_dir(root / "html")})
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see Content-Security-Policy reports
    with running(app) as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(30)
            yield driver, url, root
        finally:
            driver.quit()


def _chat(driver, url, model: str, message: str, max_tokens: int):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    wait = WebDriverWait(driver, 30)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#model option[value='{model}']")))
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    tokens = driver.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(max_tokens))
    driver.find_element(By.ID, "input").send_keys(message)
    driver.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg[data-done]"))
    done = driver.find_element(By.CSS_SELECTOR, ".msg[data-done]")
    return done


def test_page_lists_models_and_streams_an_answer(page):
    from selenium.webdriver.common.by import By

    driver, url, root = page
    msg = _chat(driver, url, "tiny", "hello", 5)
    assert msg.get_attribute("data-done") == "true"
    options = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]
    assert options == ["tiny", "html"]
    user, assistant = driver.find_elements(By.CSS_SELECTOR, "#log .msg")
    assert user.find_element(By.CLASS_NAME, "text").text == "hello"
    assert "assistant" in assistant.get_attribute("class")
    assert driver.find_element(By.ID, "status").text == "finished: length"
    # the page streamed it: the server counted a chat request answered 200, and its SSE chunks arrived
    import httpx
    metrics = httpx.get(url + "/metrics").text
    assert 'tinyrlhf_requests_total{endpoint="chat",model="tiny",status="200"} 1.0' in metrics
    driver.save_screenshot(str(root / "chat.png"))


def test_model_html_is_shown_as_text(page):
    """The 'html' model answers <img onerror=...><script>...</script>: the page shows those characters,
    creates no element from them and runs none of their code."""
    from selenium.webdriver.common.by import By

    driver, url, root = page
    typed = "<b>bold?</b>"
    msg = _chat(driver, url, "html", typed, 2)
    assert msg.get_attribute("data-done") == "true"
    assert msg.find_element(By.CLASS_NAME, "text").text == HTML * 2
    user = driver.find_elements(By.CSS_SELECTOR, "#log .msg.user .text")[0]
    assert user.text == typed  # the user's own text too
    log = driver.find_element(By.ID, "log")
    assert log.find_elements(By.TAG_NAME, "img") == [] and log.find_elements(By.TAG_NAME, "script") == []
    assert log.find_elements(By.TAG_NAME, "b") == []
    assert driver.execute_script("return window.__xss === undefined")
    driver.save_screenshot(str(root / "chat-html.png"))
    if os.environ.get("TINYRLHF_SCREENSHOTS"):  # for a person to look at: TINYRLHF_SCREENSHOTS=DIR
        os.makedirs(os.environ["TINYRLHF_SCREENSHOTS"], exist_ok=True)
        shutil.copy(root / "chat.png", os.environ["TINYRLHF_SCREENSHOTS"])
        shutil.copy(root / "chat-html.png", os.environ["TINYRLHF_SCREENSHOTS"])


def _csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_page_runs_under_its_csp(page):
    """The server sends script-src 'self' (no inline script): the page's own script still does everything
    above, and the browser reports no CSP violation."""
    driver, url, _ = page
    driver.get_log("browser")  # drop what earlier tests logged
    msg = _chat(driver, url, "tiny", "hi", 2)
    assert msg.get_attribute("data-done") == "true"
    assert _csp_violations(driver) == []


def test_page_with_an_api_key(page, tmp_path):
    """Against `serve --api-key`: the page says it needs the key, lists the models once it is typed into the
    API key field, and streams an answer with it (the server counts that chat request as 200)."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver, _, _ = page
    key = "page-key-123"
    app = make_app({"tiny": tiny_model_dir(tmp_path / "tiny")}, HTTPConfig(api_key=key))
    with running(app) as url:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "needs an API key" in d.find_element(By.ID, "status").text)
        assert driver.find_elements(By.CSS_SELECTOR, "#model option") == []
        driver.find_element(By.ID, "api-key").send_keys(key + Keys.TAB)  # change event: the models reload
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#model option[value='tiny']")))
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("3")
        driver.find_element(By.ID, "input").send_keys("hello")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg[data-done]"))
        assert driver.find_element(By.CSS_SELECTOR, ".msg[data-done]").get_attribute("data-done") == "true"
        assert driver.find_element(By.ID, "status").text == "finished: length"
        metrics = httpx.get(url + "/metrics").text
        assert 'tinyrlhf_requests_total{endpoint="chat",model="tiny",status="200"} 1.0' in metrics
        assert _csp_violations(driver) == []
