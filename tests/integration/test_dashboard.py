"""The tracker's dashboard in a real headless browser (Debian's chromium, driven by Selenium through
/usr/bin/chromedriver): opened during a running 1 -> 2 swarm, its availability map changes as the swarm
fills the file in, the file (with a hostile name, shown literally) and the peers are listed, and a
screenshot is saved under the test's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_metrics import start_tracker
from tests.procs import Proc, make_file

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: A file name a remote peer may publish: markup must show as text, never run or render.
HOSTILE = "<img src=x onerror=alert(1)> &amp; <b>bold"

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install .[test])"
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium or chromedriver is missing (scripts/sysdeps.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_follows_a_swarm(
    procs: Callable[..., Proc], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    _, taddr, thttp = start_tracker(procs)
    src = make_file(tmp_path / "data.bin", 600 * 4096)
    slow = {"P2PFS_TEST_DELAY": "0.01"}  # 600 chunks of 4 KiB, 10 ms per reply: a few seconds to watch
    share = procs(
        "share",
        str(src),
        "--name",
        HOSTILE,
        "--tracker",
        taddr,
        "--host",
        "127.0.0.1",
        "--chunk-size",
        "4K",
        env=slow,
    )
    share.expect("published ")
    wait = WebDriverWait(browser, 30)
    browser.get(f"http://{thttp}/")
    canvas = browser.find_element(By.ID, "availability")
    # the only file is chosen by itself; its map: every chunk held by its publisher alone
    wait.until(lambda _: canvas.get_attribute("data-total") == "600")

    gets = [
        procs(
            "get",
            HOSTILE,
            str(tmp_path / f"out{i}.bin"),
            "--tracker",
            taddr,
            "--host",
            "127.0.0.1",
            "--seed",
            env=slow,
        )
        for i in range(2)
    ]
    # the swarm fills the map in: more holders per chunk, without reloading the page
    wait.until(lambda _: int(canvas.get_attribute("data-total") or 0) > 600)
    rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#peers tbody tr")
    wait.until(lambda _: len(rows()) == 3)
    browser.save_screenshot(str(tmp_path / "dashboard-during.png"))

    names = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#files tbody tr td:first-child")]
    assert names == [HOSTILE]  # literally, as text
    assert browser.find_element(By.ID, "detail-name").text == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main b") == []  # nothing of it became markup
    addresses = sorted(tr.find_element(By.CSS_SELECTOR, "td").text for tr in rows())
    expected = sorted(
        [share.stdout[0].split()[-1], *(g.expect(r"seeding .* on (\S+);", 60).group(1) for g in gets)]
    )
    assert addresses == expected

    # every chunk ends with three holders: the map says so
    wait.until(lambda _: canvas.get_attribute("data-total") == str(3 * 600))
    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert (tmp_path / "out0.bin").read_bytes() == src.read_bytes()
