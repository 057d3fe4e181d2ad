"""
Real Chromium for the web client's end-to-end tests and the screenshots:
Debian's chromium and chromedriver, driven by Selenium, headless, with a
fresh profile each time and nothing fetched from the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_end_to_end import TwistdChat
from tests.twistd_helpers import free_port
from tests.waiting import wait_until

__all__ = ["wait_until"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-crash-reporter",
    # ChromeDriver talks to Chromium over a pipe, not a port Chromium
    # announces in a DevToolsActivePort file (ChromeDriver's advice: "more
    # reliable and more secure").
    "--remote-debugging-pipe",
]


#: How many starts of Chromium are tried before giving up.
STARTS = 3

# How long ChromeDriver waits for Chromium to be ready, in seconds: it
# starts in 1-3 s here, loaded or not; ChromeDriver's own default is 60.
STARTUP_TIMEOUT = 20


def missing() -> str | None:
    """
    Why the browser tests cannot run here, or None if they can.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def require_browser() -> None:
    """
    Skip the calling test without a browser; under CI=true, fail instead.
    """
    reason = missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run, and CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def chromium(
    width: int = 1280,
    height: int = 800,
    downloads: Path | None = None,
) -> Any:
    """
    A headless Chromium with a fresh profile, its window C{width} by
    C{height} CSS pixels; files it downloads go to C{downloads}.

    A start that fails is tried again, up to L{STARTS} times, each time
    with a fresh profile: once, on a CI machine, Chromium never became
    ready ("DevToolsActivePort file doesn't exist"), which could not be
    made to happen here, on a quiet machine or a loaded one. If every
    start fails, the machine cannot run a browser, which says nothing
    about the web client: the calling test is skipped (even with
    CI=true, unlike a missing Chromium, which the CI script should have
    installed), with the end of ChromeDriver's and Chromium's own log,
    which says why.
    """
    from selenium.common.exceptions import WebDriverException

    logs: list[str] = []
    for attempt in range(1, STARTS + 1):
        home = Path(tempfile.mkdtemp(prefix="chat-chromium-"))
        started = time.monotonic()
        try:
            driver = _start(home, width, height, downloads)
        except WebDriverException as e:
            took = time.monotonic() - started
            log = _log_tail(home / "chromedriver.log")
            logs.append(f"start {attempt} ({took:.1f} s): {e.msg}\n{log}")
            shutil.rmtree(home, ignore_errors=True)
            continue
        driver.profile = home
        return driver
    pytest.skip(f"Chromium did not start ({STARTS} tries):\n" + "\n".join(logs))


def _start(home: Path, width: int, height: int, downloads: Path | None) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={home / 'profile'}"]:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
            },
        )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("browserStartupTimeout", STARTUP_TIMEOUT * 1000)
    # Chromium's caches and settings outside the profile go under the
    # same fresh folder, whatever HOME is on the machine running it.
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    service = Service(
        executable_path=CHROMEDRIVER,
        service_args=["--enable-chrome-logs"],
        log_output=str(home / "chromedriver.log"),
        env=env,
    )
    driver = webdriver.Chrome(service=service, options=options)
    try:
        # The window size includes the browser's frame: make the page
        # itself the size asked for.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if inner != [width, height]:
            driver.set_window_size(
                width + (width - inner[0]), height + (height - inner[1])
            )
        if downloads is not None:
            driver.execute_cdp_cmd(
                "Browser.setDownloadBehavior",
                {"behavior": "allow", "downloadPath": str(downloads)},
            )
    except BaseException:
        driver.quit()
        raise
    return driver


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    # Leave out the capabilities and preferences ChromeDriver prints as
    # indented JSON: the reason is in Chromium's own lines.
    kept = [line for line in text.splitlines() if line[:1] not in ("", " ", "}", "{")]
    return "\n".join(kept[-lines:])


def page_errors(driver: Any) -> list[str]:
    """
    Script errors and policy violations the page logged since the last
    call (network errors, such as a refused connection, are expected).
    """
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if (entry.get("source") != "network" and entry.get("level") == "SEVERE")
        or "Content Security Policy" in entry.get("message", "")
    ]


def quit_browser(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver.profile, ignore_errors=True)


class Page:
    """
    The chat page in one browser, by its test hooks.
    """

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url

    def find(self, testid: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def all(self, testid: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(
            self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        )

    def open_fresh(self) -> None:
        """
        The page with nothing remembered from an earlier test.
        """
        self.driver.get(self.url)
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.url)
        wait_until(lambda: self.find("login-username").is_displayed(), what="login")

    def login(self, username: str, password: str = "surabaya") -> None:
        self.open_fresh()
        self.find("login-username").send_keys(username)
        self.find("login-password").send_keys(password)
        self.find("login-submit").click()
        self.wait_logged_in()

    def wait_logged_in(self) -> None:
        wait_until(
            lambda: self.find("logout").is_displayed() and self.state() == "connected",
            what="logged in and connected",
        )

    def state(self) -> str:
        return str(self.find("conn-state").get_attribute("data-state"))

    def open(self, key: str) -> None:
        """
        Type a username (or #group) into To: its conversation opens.
        """
        field = self.find("compose-to")
        field.clear()
        field.send_keys(key)
        wait_until(
            lambda: (
                self.driver.execute_script("return sessionStorage.getItem('chat.open')")
                == key
            ),
            what=f"conversation {key} open",
        )

    def send(self, text: str) -> None:
        self.find("compose-text").send_keys(text)
        self.find("compose-send").click()

    def texts(self, text: str) -> list[str]:
        """
        The text of every rendered message that contains C{text}, read in
        one go in the page (nodes may be replaced between two calls).
        """
        found: list[str] = self.driver.execute_script(
            """
            return [...document.querySelectorAll('[data-testid="message"]')]
              .map((node) => node.textContent)
              .filter((text) => text.includes(arguments[0]));
            """,
            text,
        )
        return found

    def wait_message(self, text: str) -> str:
        found: list[str] = wait_until(lambda: self.texts(text), what=repr(text))
        return found[0]

    def click_in_message(self, text: str, selector: str) -> None:
        """
        Click C{selector} inside the message containing C{text}.
        """
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def click() -> bool:
            try:
                for message in self.all("message"):
                    if text in message.text:
                        message.find_element(By.CSS_SELECTOR, selector).click()
                        return True
            except StaleElementReferenceException:
                pass
            return False

        wait_until(click, what=f"{selector} in the message {text!r}")


class WebChat(TwistdChat):
    """
    C{twistd chat} with the web client on a fixed port (so a restarted
    server is found at the same address by the open pages).
    """

    def __init__(self, workdir: Path, *arguments: str) -> None:
        self.web_port = free_port()
        super().__init__(
            workdir,
            "--demo",
            "--web",
            f"tcp:{self.web_port}:interface=127.0.0.1",
            *arguments,
        )
        self.log.touch()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def start(self, port: int = 0) -> int:
        offset = self.log.stat().st_size
        result = super().start(port)
        wait_until(
            lambda: b"Web client on" in self.log.read_bytes()[offset:],
            what="the web client to listen",
        )
        return result
