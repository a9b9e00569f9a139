"""The demo page at / in a real browser: headless Chromium (Debian packages `chromium` and
`chromium-driver`) driven by selenium types a prompt, and the streamed continuation appears
with its patches marked exactly where the model put them."""

from __future__ import annotations

import shutil

import pytest

import bolmo
from bolmo.cli.generate_commands import patch_characters
from bolmo.generation import generate_ids
from bolmo.serve import ServeConfig
from serve_helpers import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs headless Chromium: apt-get install -y chromium chromium-driver",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1000,700", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def expected_patches(prompt: str, max_new_bytes: int) -> tuple[str, list[str]]:
    """The continuation and the page's spans: the model's patches (as `--show-patches` cuts them),
    also split where the prompt ends (the continuation is styled apart)."""
    result = generate_ids(bolmo.load(), [prompt], max_new_bytes)[0]
    spans = []
    for patch in patch_characters(result.prompt + result.data, result.prompt_boundaries + result.boundaries):
        for part in ([c for c, start in patch if start < len(result.prompt)],
                     [c for c, start in patch if start >= len(result.prompt)]):
            if part:
                spans.append("".join(part))
    return result.text, spans


def test_the_page_streams_a_continuation_with_its_patches(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt = "The json module"
    continuation, spans = expected_patches(prompt, 60)
    with serving(bolmo.load(), ServeConfig(api_key="sesame")) as running:
        browser.get(running.url + "/?key=sesame")
        box = browser.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(prompt)
        browser.find_element(By.ID, "max").clear()
        browser.find_element(By.ID, "max").send_keys("60")
        browser.find_element(By.ID, "go").click()
        out = browser.find_element(By.ID, "out")
        WebDriverWait(browser, 120).until(lambda _: out.get_attribute("data-done"))
        shown = [s.get_attribute("textContent") for s in out.find_elements(By.CSS_SELECTOR, "span.patch")]
        generated = out.find_elements(By.CSS_SELECTOR, "span.patch.gen")
        assert out.get_attribute("data-continuation") == continuation
        assert out.get_attribute("data-done") == "length"
        assert shown == spans and len(generated) >= 2
        assert "".join(s.get_attribute("textContent") for s in generated) == continuation
        # neighbouring patches alternate shades
        classes = [s.get_attribute("class") for s in out.find_elements(By.CSS_SELECTOR, "span.patch")]
        assert all(("p0" in a) != ("p0" in b) for a, b in zip(classes, classes[1:]))
