"""
The web client end to end: real C{twistd chat --web} processes, real
Chromium pages (Selenium), and the course's TCP client in the same
conversations.

Without Chromium these tests are skipped (with CI=true they fail); with a
Chromium that cannot start, they are skipped with its log (L{chromium}).
"""

from __future__ import annotations

import hashlib
import http.server
import random
import signal
import socket
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.model import MAX_NAME_LENGTH, MIN_PASSWORD_LENGTH
from tests.browser import (
    Page,
    WebChat,
    chromium,
    page_errors,
    quit_browser,
    require_browser,
    wait_until,
)
from tests.test_end_to_end import CourseClient

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebChat]:
    require_browser()
    chat = WebChat(
        tmp_path_factory.mktemp("web"),
        "--registration",
        "open",
        "--registration-rate",
        "50/1h",
        "--max-file-size",
        "512K",
    )
    chat.start()
    yield chat
    if chat.process is not None and chat.process.poll() is None:
        chat.stop()
    assert "Traceback" not in chat.log.read_text()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def alice(server: WebChat) -> Iterator[Page]:
    driver = chromium()
    yield Page(driver, server.url)
    errors = page_errors(driver)
    quit_browser(driver)
    assert errors == []


@pytest.fixture(scope="module")
def bob(server: WebChat, downloads: Path) -> Iterator[Page]:
    driver = chromium(downloads=downloads)
    yield Page(driver, server.url)
    errors = page_errors(driver)
    quit_browser(driver)
    assert errors == []


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def undelivered(server: WebChat, username: str) -> int:
    """
    How many messages to C{username} wait in the server's database.
    """
    connection = sqlite3.connect(server.workdir / "chat.sqlite")
    try:
        row = connection.execute(
            "SELECT count(*) FROM mailbox WHERE recipient = ?",
            (username,),
        ).fetchone()
    finally:
        connection.close()
    return int(row[0])


def test_two_browsers_chat_live(alice: Page, bob: Page) -> None:
    """Two people in two browsers: each message appears live on the other
    side, once, and the sender's own side shows it too."""
    alice.login("messi")
    bob.login("henderson")
    bob.open("messi")
    hello = unique("hello from the browser")
    alice.open("henderson")
    alice.send(hello)
    bob.wait_message(hello)
    alice.wait_message(hello)
    reply = unique("and hello back")
    from selenium.webdriver.common.keys import Keys

    bob.find("compose-text").send_keys(reply + Keys.ENTER)
    alice.wait_message(reply)
    # Presence: each sees the other online, in the list and the header.
    wait_until(
        lambda: "online" in alice.driver.find_element("id", "conv-status").text,
        what="messi sees henderson online",
    )
    # A message shown twice would be shown before one sent after it.
    last = unique("and the last one")
    alice.send(last)
    for page in (alice, bob):
        page.wait_message(last)
        assert len(page.texts(hello)) == 1
        assert len(page.texts(reply)) == 1


def test_a_group_made_joined_and_left_in_the_header(alice: Page) -> None:
    """A group's header offers what can be done with it: Create while it
    does not exist, Leave for a member, and Create again once the last
    member has left (the group is gone, so it cannot be joined)."""
    alice.login("messi")
    key = "#" + uuid.uuid4().hex[:12]
    alice.open(key)

    def header() -> tuple[str, list[str]]:
        status = alice.driver.find_element("id", "conv-status").text
        actions = alice.driver.find_element("id", "conv-actions")
        buttons = actions.find_elements("css selector", "button")
        return status, [button.text for button in buttons]

    def click(label: str) -> None:
        actions = alice.driver.find_element("id", "conv-actions")
        for button in actions.find_elements("css selector", "button"):
            if button.text == label:
                button.click()
                return
        raise AssertionError(f"no {label!r} button in {header()!r}")

    absent = (f"There is no group {key} yet.", [f"Create {key}"])
    wait_until(lambda: header() == absent, what="the header offers Create")
    click(f"Create {key}")
    wait_until(
        lambda: header() == ("1 member", ["Leave"]), what="the header offers Leave"
    )
    click("Leave")
    wait_until(lambda: header() == absent, what="the header offers Create again")


def test_course_client_and_browser(server: WebChat, bob: Page) -> None:
    """The course's TCP client and a browser in one conversation, both
    ways."""
    bob.login("henderson")
    bob.open("lineker")
    course = CourseClient(server.port)
    token = course.login("lineker", "surabaya")
    from_tcp = unique("from the course client")
    assert course.sendmessage(token, "henderson", from_tcp)["status"] == "OK"
    bob.wait_message(from_tcp)
    from_web = unique("from the browser")
    bob.send(from_web)

    def arrived() -> list[str]:
        inbox = course.inbox(token)["messages"].get("henderson", [])
        return [m["msg"] for m in inbox]

    got: list[str] = []
    wait_until(lambda: got.extend(arrived()) or from_web in got, what="the inbox")
    assert got.count(from_web) == 1
    course.close()


def test_markup_is_text(alice: Page, bob: Page) -> None:
    """A message that looks like HTML is shown as text and never runs."""
    alice.login("messi")
    bob.login("henderson")
    bob.open("messi")
    alice.open("henderson")
    attack = (
        "<img src=x onerror=\"window.__xss=1;document.title='pwned'\">"
        "<script>window.__xss=2</script>&lt;b&gt;"
    )
    alice.send(attack)
    for page in (bob, alice):
        assert attack in page.wait_message("<script>window.__xss=2</script>")
        elements = page.driver.execute_script(
            """
            return [...document.querySelectorAll('[data-testid="message"]')]
              .filter((node) => node.textContent.includes(arguments[0]))
              .map((node) => node.querySelectorAll("img, script, b").length);
            """,
            attack,
        )
        assert elements == [0]
        assert page.driver.execute_script("return window.__xss") is None
        assert page.driver.title != "pwned"


class BlankPage(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>elsewhere</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def upgrade_status(port: int, origin: str | None) -> bytes:
    """
    The status line the server answers a WebSocket upgrade with.
    """
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return s.recv(4096).split(b"\r\n", 1)[0]


def test_foreign_origin_refused(server: WebChat, alice: Page) -> None:
    """A page of another origin cannot open the chat's WebSocket: the
    upgrade is refused with 403 before any frame."""
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BlankPage)
    thread = threading.Thread(target=elsewhere.serve_forever, daemon=True)
    thread.start()
    try:
        alice.driver.get(f"http://127.0.0.1:{elsewhere.server_address[1]}/")
        outcome = alice.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const ws = new WebSocket(arguments[0]);
            let opened = false;
            ws.onopen = () => { opened = true; };
            ws.onclose = (event) => done({opened, code: event.code});
            """,
            f"ws://127.0.0.1:{server.web_port}/ws",
        )
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
    assert outcome == {"opened": False, "code": 1006}
    assert b" 403 " in upgrade_status(server.web_port, "http://evil.example")
    assert b" 403 " in upgrade_status(server.web_port, None)
    assert b" 101 " in upgrade_status(
        server.web_port, f"http://127.0.0.1:{server.web_port}"
    )
    assert "origin http://evil.example is not allowed" in server.log.read_text()


def test_file_downloads_byte_identical(
    tmp_path: Path, alice: Page, bob: Page, downloads: Path
) -> None:
    """A file picked in one browser is downloaded byte-identical in the
    other, under its sanitized name."""
    alice.login("messi")
    bob.login("henderson")
    bob.open("messi")
    alice.open("henderson")
    data = random.Random(8).randbytes(300 * 1024)
    path = tmp_path / f"quarterly report {uuid.uuid4().hex[:6]}.bin"
    path.write_bytes(data)
    name = path.name.replace(" ", "_")
    alice.driver.execute_script(
        """
        window.__progress = false;
        new MutationObserver(() => {
          const bar = document.querySelector("progress.upload-progress");
          if (bar) window.__progress = true;
        }).observe(document.body, {childList: true, subtree: true});
        """
    )
    alice.find("compose-file").send_keys(str(path))
    assert "300 KB" in bob.wait_message(name)
    alice.wait_message(name)
    wait_until(
        lambda: all("Sending" not in text for text in alice.texts(name)),
        what="the upload to finish",
    )
    assert alice.driver.execute_script("return window.__progress") is True
    bob.click_in_message(name, '[data-testid="file-download"]')
    target = downloads / name
    wait_until(target.exists, what=f"{target} downloaded")
    wait_until(
        lambda: not list(downloads.glob("*.crdownload")), what="the download to end"
    )
    assert hashlib.sha256(target.read_bytes()).hexdigest() == (
        hashlib.sha256(data).hexdigest()
    )


def test_register_reload_logout(server: WebChat, alice: Page) -> None:
    """Registering from the page logs in; a reload stays logged in (the
    token is in sessionStorage, not in a URL or a cookie); logging out
    forgets it."""
    alice.open_fresh()
    username = f"budi{uuid.uuid4().hex[:6]}"
    alice.driver.find_element("id", "register-toggle").click()
    alice.find("login-username").send_keys(username)
    alice.driver.find_element("id", "register-fullname").send_keys("Budi Santoso")
    alice.find("login-password").send_keys("rahasia123")
    alice.find("login-submit").click()
    alice.wait_logged_in()
    wait_until(
        lambda: alice.driver.find_element("id", "me-name").text == "Budi Santoso",
        what="the header to show the full name",
    )
    token = alice.driver.execute_script(
        "return JSON.parse(sessionStorage.getItem('chat.session')).token"
    )
    assert token not in alice.driver.current_url
    assert alice.driver.get_cookies() == []
    alice.driver.refresh()
    alice.wait_logged_in()
    alice.find("logout").click()
    wait_until(lambda: alice.find("login-username").is_displayed(), what="login")
    notice = alice.driver.find_element("id", "login-notice").text
    assert notice == "You have logged out."
    assert alice.driver.execute_script("return sessionStorage.length") == 0
    alice.driver.refresh()
    wait_until(lambda: alice.find("login-username").is_displayed(), what="login")
    # The page shows the login form once the server answered its logout,
    # or after 3 s without an answer (a loaded machine): then the server
    # ends the session a little later.
    course = CourseClient(server.port)
    wait_until(
        lambda: course.sendstring(f"who {token}\r\n").get("code") == "no_session",
        what="the session to end on the server",
    )
    course.close()


def test_login_form_checks(alice: Page) -> None:
    """The login form checks the username and a new password by the
    server's rules before sending anything, and explains the server's
    refusals by their code."""
    alice.open_fresh()
    error = alice.driver.find_element("id", "login-error")

    def submit(username: str, password: str) -> str:
        for testid, text in [
            ("login-username", username),
            ("login-password", password),
        ]:
            alice.find(testid).clear()
            alice.find(testid).send_keys(text)
        before = error.text
        alice.find("login-submit").click()
        return str(
            wait_until(lambda: error.text != before and error.text, what="an error")
        )

    assert submit("two words", "surabaya") == (
        f"Usernames are 1-{MAX_NAME_LENGTH} lowercase letters, digits, '_', '-' or '.'."
    )
    assert submit("messi", "wrong") == "Wrong password."
    assert submit("nobody", "surabaya") == "There is no account with that username."
    alice.driver.find_element("id", "register-toggle").click()
    alice.driver.find_element("id", "register-fullname").send_keys("Budi Santoso")
    assert submit("budi", "short") == (
        f"Passwords need at least {MIN_PASSWORD_LENGTH} characters."
    )
    assert submit("messi", "surabaya") == "That username is taken."


def test_restart_reconnects_and_delivers_once(server: WebChat, bob: Page) -> None:
    """The server restarts under an open page: the page reconnects by
    itself, subscribes again, and shows a message sent meanwhile exactly
    once (and earlier ones still once), acknowledging it after showing it."""
    bob.login("henderson")
    bob.open("lineker")
    course = CourseClient(server.port)
    token = course.login("lineker", "surabaya")
    before = unique("before the restart")
    course.sendmessage(token, "henderson", before)
    bob.wait_message(before)
    course.close()

    chat_port = server.port
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    wait_until(lambda: bob.state() != "connected", what="the page to notice")
    server.start(port=chat_port)
    course = CourseClient(server.port)
    token = course.login("lineker", "surabaya")
    meanwhile = unique("sent while you were away")
    assert course.sendmessage(token, "henderson", meanwhile)["status"] == "OK"
    bob.wait_message(meanwhile)
    assert bob.state() == "connected"
    # A message shown twice would be shown before one sent after it.
    last = unique("and one more")
    assert course.sendmessage(token, "henderson", last)["status"] == "OK"
    bob.wait_message(last)
    assert len(bob.texts(meanwhile)) == 1
    assert len(bob.texts(before)) == 1
    course.close()
    # Each was acknowledged once shown: nothing is left undelivered.
    wait_until(
        lambda: undelivered(server, "henderson") == 0,
        what="the page acknowledged every message it showed",
    )


def test_page_helpers(alice: Page) -> None:
    """The page's helpers, run in the browser with the rules the server put
    in the page: recipients, one-line text, file names for the wire and for
    saving, and de-duplication by id (a message pushed again, or also in a
    history page, is kept once; the server's copy of the user's own message
    replaces the local one)."""
    alice.open_fresh()
    result = alice.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const modules = ["format", "rules", "state"].map(
          (name) => import(`/js/${name}.js`));
        Promise.all(modules).then(
          ([f, r, s]) => {
            const settings = JSON.parse(
              document.querySelector('meta[name="chat-settings"]').content);
            const rules = new r.Rules(settings.rules);
            const state = new s.ChatState("messi");
            const pushed = {id: 7, from: "henderson", to: "messi", msg: "hi",
                            msg_from: "Jordan Henderson",
                            sent_at: "2026-01-01T10:00:00Z"};
            const first = state.add(pushed).added;
            const again = state.add({...pushed}).added;
            const mine = state.conversation("henderson");
            mine.pending.push({localId: 1, from: "messi", msg: "yo", status: "sent"});
            state.add({id: 9, from: "messi", to: "henderson", msg: "yo",
                       sent_at: "2026-01-01T10:01:00Z"});
            state.add({id: 3, from: "ayu", to: "messi", group: "team", msg: "g",
                       sent_at: "2026-01-01T09:00:00Z"});
            done({
              keys: ["Messi ", "#Team", "budi@realm-b", "two words", "a/b", ""]
                .map((text) => rules.conversationKey(text)),
              oneLine: f.oneLine("  line one\\r\\n\\n line two \\u0000 "),
              wire: ["my report.pdf", "../../.bashrc", "a\\tb\\u0007.txt", "CON.txt",
                     "a:b\\uff0fc?.txt", "invoice\\u202efdp.exe", "notes."]
                .map((name) => rules.wireFileName(name)),
              limits: [settings.max_file_size, settings.registration,
                       rules.maxNameLength,
                       document.getElementById("login-username").maxLength],
              save: [f.saveName("../etc/passwd"), f.saveName(".hidden"),
                     f.saveName("ok name.png"), f.saveName("")],
              dedupe: [first, again],
              ids: mine.messages().map((m) => m.id ?? "local"),
              fullName: state.title("henderson"),
              groups: state.conversation("#team").messages().length,
              sizes: [f.humanSize(512), f.humanSize(300 * 1024), f.humanSize(4 << 20)],
            });
          },
          (error) => done(String(error)),
        );
        """
    )
    assert result == {
        "keys": ["messi", "#team", "budi@realm-b", None, None, None],
        "oneLine": "line one line two",
        "wire": [
            "my_report.pdf",
            "bashrc",
            "a_b_.txt",
            "_CON.txt",
            "a_b_c_.txt",
            "invoicefdp.exe",
            "notes",
        ],
        "limits": [512 * 1024, True, MAX_NAME_LENGTH, MAX_NAME_LENGTH],
        "save": ["_etc_passwd", "hidden", "ok name.png", "download"],
        "dedupe": [True, False],
        "ids": [7, 9],
        "fullName": "Jordan Henderson",
        "groups": 1,
        "sizes": ["512 B", "300 KB", "4.0 MB"],
    }


def test_missing_browser_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Chromium the browser tests skip with the reason; with CI=true
    they fail instead."""
    import tests.browser

    monkeypatch.setattr(tests.browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium is missing"):
        require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_browser()


def test_a_browser_that_cannot_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A Chromium that exits at once is tried again, then skips the test
    with ChromeDriver's log of each start, not a bare "session not
    created"; no profile folder is left behind.
    """
    require_browser()
    import tests.browser

    monkeypatch.setattr(tests.browser, "CHROMIUM", "/bin/false")
    monkeypatch.setattr(tests.browser, "STARTUP_TIMEOUT", 1)
    before = set(Path(tempfile.gettempdir()).glob("chat-chromium-*"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        chromium()
    message = str(skipped.value)
    assert message.startswith("Chromium did not start (3 tries):")
    assert [f"start {n} (" in message for n in (1, 2, 3)] == [True, True, True]
    assert "Launching chrome: /bin/false" in message
    assert "--remote-debugging-pipe" in message
    assert set(Path(tempfile.gettempdir()).glob("chat-chromium-*")) == before
