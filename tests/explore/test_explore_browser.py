"""The explorer in a real browser: Debian's headless Chromium driven by Selenium loads the
page, uploads an image, clicks a concept and sees the maps and the neighbours' gallery.

Skips, with the reason, only where Chromium, its driver or Selenium is not installed
(``.ci/run`` installs ``chromium chromium-driver``). The screenshot is saved under the test's
temporary folder; ``STELLAR_EXPLORE_MODEL=<model>`` draws it with that model instead of the
random tiny one (how ``docs/explore.png`` was made).
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (test extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def browser():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y ...)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,2000")
    chrome = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    yield chrome
    chrome.quit()


def _wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


def _click(browser, element) -> None:
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def _status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def test_upload_click_retrieve_in_chromium(browser, served, explorer, tmp_path):
    photo = tmp_path / "upload.png"
    Image.open(explorer.picks[2]).resize((200, 150)).save(photo)
    browser.get(served)
    upload = _wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(photo))
    picture = _wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "#concepts img")))
    _wait(browser, lambda b: "Opened" in _status(b))
    assert browser.find_element(By.CSS_SELECTOR, "#token-maps img").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#legend span[style*=background]")) == (
        explorer.model.num_tokens
    )

    # a click on the picture selects the token that owns that spot
    _click(browser, picture)
    _wait(browser, lambda b: "Selected" in _status(b))
    bold = browser.find_elements(By.CSS_SELECTOR, "#legend span[style*=bold]")
    assert len(bold) == 1 and bold[0].text.split()[0] in _status(browser)

    _click(browser, browser.find_element(By.ID, "find"))
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#neighbours img")) >= 8, 60)
    assert "Retrieved 8" in _status(browser)

    # a neighbour clicked becomes the source of a swap, which the edit section explains
    _click(browser, browser.find_elements(By.CSS_SELECTOR, "#neighbours button")[1])
    _wait(browser, lambda b: "Swap source" in _status(b))
    _click(browser, browser.find_element(By.ID, "swap"))
    _wait(browser, lambda b: "Swap token" in b.find_element(By.ID, "edit-text").text)
    assert browser.find_element(By.CSS_SELECTOR, "#delta img").is_displayed()
    browser.execute_script("window.scrollTo(0, 0);")
    shot = tmp_path / "explore.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
