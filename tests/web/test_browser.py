"""The page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium,
against a real `python -m web` on PostgreSQL and NATS.

Skipped, with the reason, where either binary is missing (`.ci/run` installs them). Writes the README's
screenshots: bench/results/page-desktop.png (1280x800) and page-phone.png (390x844).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import Proc, start_web
from tests.services import NatsServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
WAIT = 5.0  # seconds for anything the page should show; the assertions on speed are separate

_missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
if _missing:
    pytest.skip(
        f"no headless browser: {', '.join(_missing)} missing (apt-get install chromium chromium-driver; .ci/run does)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

Browser = Callable[[int], WebDriver]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """`browser(n)`: the n-th headless Chromium session (1280x800), started on first use and reused by the
    module's later tests (a start costs about a second); all quit after the module."""
    drivers: list[WebDriver] = []
    logs = tmp_path_factory.mktemp("chromium")

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",  # as root (CI), Chromium refuses to start with its sandbox
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1280,800",
            f"--user-data-dir={logs / f'profile-{len(drivers)}'}",
        ):
            options.add_argument(argument)
        service = webdriver.ChromeService(
            executable_path=str(CHROMEDRIVER), log_output=str(logs / f"chromedriver-{len(drivers)}.log")
        )
        driver = webdriver.Chrome(options=options, service=service)
        drivers.append(driver)
        return driver

    def session(number: int) -> WebDriver:
        while len(drivers) <= number:
            start()
        return drivers[number]

    yield session
    for driver in drivers:
        driver.quit()


@pytest.fixture
async def web(jetstream: NatsServer, database_url: str, tmp_path: Path) -> AsyncIterator[Proc]:
    """`python -m web` on PostgreSQL, publishing to JetStream as the `web` user."""
    proc = await start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path).ready()
    yield proc
    await proc.stop()


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT) -> Any:
    def checked(driver: WebDriver) -> Any:
        try:
            return condition(driver)
        except StaleElementReferenceException:  # the page re-rendered under us: look again
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(checked)


def row(driver: WebDriver, task: str) -> Any:
    """The list's row of the todo with this task, or None."""
    for item in driver.find_elements(By.CSS_SELECTOR, "#todos li"):
        if item.find_element(By.CSS_SELECTOR, "label").text == task:
            return item
    return None


def feed_has(driver: WebDriver, kind: str, task: str) -> bool:
    entries = driver.find_elements(By.CSS_SELECTOR, f"#feed li.event.{kind} .task")
    return any(entry.text == task for entry in entries)


def open_page(driver: WebDriver, url: str, state: str = "on") -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.ID, "feed-status").get_attribute("data-state") == state)


def add(driver: WebDriver, task: str) -> None:
    """Type the task and press Enter, as a keyboard user does."""
    field = driver.find_element(By.ID, "task")
    field.clear()
    field.send_keys(task, Keys.ENTER)


def paste(driver: WebDriver, text: str) -> None:
    """Put text into the field as a paste does (an input event)."""
    driver.execute_script(
        "const field = document.getElementById('task');"
        "field.value = arguments[0]; field.dispatchEvent(new Event('input'));",
        text,
    )


def screenshot(driver: WebDriver, name: str, width: int, height: int, *, mobile: bool) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )
    try:
        # nothing wider than the screen: no sideways scrolling at phone width
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        RESULTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(RESULTS / name))
        assert (RESULTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


async def api_todos(web: Proc) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{web.url}/api/todos") as response:
        return list(await response.json())


async def test_add_complete_delete_and_errors_in_a_browser(web: Proc, browser: Browser) -> None:
    """Add (keyboard), mark done (space bar), delete; markup in a task stays text; 141 characters: the
    counter and the API's error next to the field; every change shows up in the live feed."""
    driver = browser(0)
    open_page(driver, f"{web.url}/")
    assert "Live" in driver.find_element(By.ID, "feed-status").text
    counter = driver.find_element(By.ID, "task-count")

    driver.find_element(By.ID, "task").send_keys("buy milk")
    assert counter.text == "8 / 140"
    driver.find_element(By.ID, "task").send_keys(Keys.ENTER)
    milk = wait(driver, lambda d: row(d, "buy milk"))
    assert counter.text == "0 / 140"
    wait(driver, lambda d: feed_has(d, "created", "buy milk"))

    markup = '<img src=x onerror="document.title=1"> & <b>bold</b>'
    add(driver, markup)
    wait(driver, lambda d: row(d, markup))
    assert not driver.find_elements(By.CSS_SELECTOR, "#todos img, #feed img, #todos b")
    # characters outside the BMP count once, as the API counts them (ChromeDriver cannot type them: paste)
    paste(driver, "🐕" * 140)
    assert counter.text == "140 / 140"
    add(driver, "walk the dog")
    wait(driver, lambda d: row(d, "walk the dog"))

    box = milk.find_element(By.CSS_SELECTOR, "input[type=checkbox]")
    box.send_keys(Keys.SPACE)
    wait(driver, lambda d: "done" in (row(d, "buy milk").get_attribute("class") or ""))
    wait(driver, lambda d: feed_has(d, "updated", "buy milk"))
    assert [todo["done"] for todo in await api_todos(web) if todo["task"] == "buy milk"] == [True]

    field = driver.find_element(By.ID, "task")
    field.clear()
    field.send_keys("x" * 141)
    assert counter.text == "141 / 140"
    assert "over" in (counter.get_attribute("class") or "")
    field.send_keys(Keys.ENTER)
    error = driver.find_element(By.ID, "task-error")
    wait(driver, lambda _: "at most 140 characters" in error.text)
    assert field.get_attribute("aria-invalid") == "true"
    assert error.get_attribute("aria-live") == "assertive"
    screenshot(driver, "page-desktop.png", 1280, 800, mobile=False)
    screenshot(driver, "page-phone.png", 390, 844, mobile=True)
    field.send_keys(Keys.BACKSPACE)  # 140: the error goes as soon as the task changes
    assert counter.text == "140 / 140"
    assert error.text == ""

    row(driver, "buy milk").find_element(By.CSS_SELECTOR, "button.delete").click()
    wait(driver, lambda d: row(d, "buy milk") is None)
    wait(driver, lambda d: feed_has(d, "deleted", "buy milk"))
    assert sorted(todo["task"] for todo in await api_todos(web)) == sorted([markup, "walk the dog"])


async def test_two_browsers_see_each_others_changes_within_a_second(web: Proc, browser: Browser) -> None:
    """A todo added in one browser appears in another within a second; done and delete travel back."""
    first, second = browser(0), browser(1)
    for driver in (first, second):
        open_page(driver, f"{web.url}/")

    add(first, "seen across browsers")
    wait(first, lambda d: row(d, "seen across browsers"))
    added = time.monotonic()
    wait(second, lambda d: row(d, "seen across browsers"))
    elapsed = time.monotonic() - added
    print(f"the second browser saw the new todo {elapsed * 1000:.0f} ms after the first")
    assert elapsed < 1.0, f"the second browser saw the new todo after {elapsed:.2f}s"

    row(second, "seen across browsers").find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    wait(first, lambda d: row(d, "seen across browsers").find_element(By.TAG_NAME, "input").is_selected())
    row(second, "seen across browsers").find_element(By.CSS_SELECTOR, "button.delete").click()
    wait(first, lambda d: row(d, "seen across browsers") is None)
    assert feed_has(first, "deleted", "seen across browsers")


async def test_without_nats_the_page_says_events_are_off(database_url: str, tmp_path: Path, browser: Browser) -> None:
    """Without NATS_URL: "events are off", and the page polls, so another browser's change still shows."""
    proc = await start_web(database_url=database_url, nats_url=None, log_dir=tmp_path, name="web-no-nats").ready()
    try:
        first, second = browser(0), browser(1)
        for driver in (first, second):
            open_page(driver, f"{proc.url}/", state="off")
            assert "events are off" in driver.find_element(By.ID, "feed-status").text.lower()
        add(first, "polled, not pushed")
        wait(second, lambda d: row(d, "polled, not pushed"), timeout=3)
        assert not second.find_elements(By.CSS_SELECTOR, "#feed li")
    finally:
        await proc.stop()
