"""
Screenshots of the web client for the README: a real C{twistd chat --web}
with a few people, groups, files and yesterday's messages, shown in
headless Chromium at 1280x800 and 360 px wide.

Run from the repository root (Debian's chromium and chromium-driver, and
the test extras, must be installed)::

    python docs/screenshots.py

It writes docs/web-desktop.png, docs/web-mobile-list.png and
docs/web-mobile-chat.png.
"""

from __future__ import annotations

import base64
import math
import signal
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import Page, WebChat, chromium, quit_browser, wait_until  # noqa: E402
from tests.test_end_to_end import CourseClient  # noqa: E402

DOCS = REPO / "docs"

PEOPLE = [
    ("sari", "Sari Dewi"),
    ("budi", "Budi Santoso"),
    ("ayu", "Ayu Lestari"),
]
PASSWORD = "rahasia123"


def png(width: int, height: int) -> bytes:
    """
    A small picture (a sunset over the sea) as a PNG, without imaging
    libraries.
    """
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            t = y / height
            sun = math.hypot(x - width * 0.62, y - height * 0.55) < height * 0.16
            if y > height * 0.62:
                wave = 0.5 + 0.5 * math.sin(x / 9 + y / 3)
                r, g, b = 40 + 30 * wave, 70 + 40 * wave, 120 + 50 * wave
            elif sun:
                r, g, b = 255, 214, 120
            else:
                r, g, b = 250 - 60 * t, 140 + 40 * t, 110 + 90 * t
            row += bytes([int(r), int(g), int(b)])
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def backdate(database: Path, hours: float) -> None:
    """
    Move every message sent so far C{hours} into the past, a minute or two
    apart: yesterday's conversation.
    """
    connection = sqlite3.connect(database)
    ids = [row[0] for row in connection.execute("SELECT id FROM messages ORDER BY id")]
    start = time.time() - hours * 3600
    for i, message_id in enumerate(ids):
        connection.execute(
            "UPDATE messages SET sent_at = ? WHERE id = ?", (start + i * 95, message_id)
        )
    connection.commit()
    connection.close()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="chat-screenshots-"))
    server = WebChat(workdir, "--registration", "open", "--registration-rate", "20/1h")
    server.start()
    clients: dict[str, CourseClient] = {}
    tokens: dict[str, str] = {}

    def connect(username: str, password: str = PASSWORD) -> None:
        clients[username] = CourseClient(server.port)
        tokens[username] = clients[username].login(username, password)

    def say(sender: str, line: str) -> None:
        reply = clients[sender].sendstring(f"{line.format(t=tokens[sender])}\r\n")
        assert reply["status"] == "OK", (line, reply)

    try:
        setup = CourseClient(server.port)
        for username, full_name in PEOPLE:
            setup.sendstring(f"register {username} {PASSWORD} {full_name}\r\n")
        setup.close()
        for username in ("sari", "budi", "ayu"):
            connect(username)
        for username in ("messi", "henderson"):
            connect(username, "surabaya")

        say(
            "budi", "send {t} sari Morning Sari! Are we still on for the design review?"
        )
        say("sari", "send {t} budi Yes, 10:00 in the small meeting room.")
        say("budi", "send {t} sari Great. I'll bring the printed mock-ups.")
        say("sari", "creategroup {t} launch")
        for member in ("budi", "ayu", "messi"):
            say(member, "joingroup {t} launch")
        say("ayu", "sendgroup {t} #launch Press kit is uploaded to the shared drive.")
        say("sari", "send {t} ayu Thanks for the press kit, it looks great")
        for username in list(clients):
            clients[username].close()
        server.stop(signal.SIGTERM)
        backdate(workdir / "chat.sqlite", hours=20)
        server.start(port=server.port)

        for username in ("sari", "budi", "ayu", "messi"):
            connect(username, "surabaya" if username == "messi" else PASSWORD)
        say("sari", "send {t} budi Good morning! How did the review go after I left?")
        say(
            "budi",
            "send {t} sari Really well. They loved the new onboarding flow, "
            "only small changes to the colours.",
        )
        picture = base64.b64encode(png(480, 270)).decode()
        say("budi", f"sendfile {{t}} sari sunset-mockup.png {picture}")
        say("sari", "send {t} budi That looks lovely! Can you send the notes too?")
        notes = base64.b64encode(b"Design review notes\n" * 900).decode()
        say("budi", f"sendfile {{t}} sari review-notes.txt {notes}")
        say("ayu", "sendgroup {t} #launch Launch checklist: 12 of 14 done.")
        say("messi", "sendgroup {t} #launch I can take the last two tomorrow.")

        desktop = chromium(1280, 800)
        try:
            page = Page(desktop, server.url)
            page.login("sari", PASSWORD)
            page.open("budi")
            page.wait_message("review-notes.txt")
            say("messi", "send {t} sari Hola Sari, do you have a minute today?")
            say("messi", "send {t} sari It's about the launch video.")
            wait_until(
                lambda: "2" in desktop.find_element("css selector", ".badge").text,
                what="the unread badge",
            )
            desktop.find_element("id", "compose-text").send_keys("On my way")
            settle(desktop)
            desktop.save_screenshot(str(DOCS / "web-desktop.png"))
        finally:
            quit_browser(desktop)

        mobile = chromium(1280, 800)
        try:
            mobile.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True},
            )
            page = Page(mobile, server.url)
            page.login("sari", PASSWORD)
            wait_until(
                lambda: mobile.find_elements("css selector", ".conv-item"),
                what="the conversation list",
            )
            say("messi", "send {t} sari Call me when you are free.")
            say("ayu", "sendgroup {t} #launch Video is rendering now.")
            wait_until(
                lambda: len(mobile.find_elements("css selector", ".badge")) == 2,
                what="unread badges",
            )
            settle(mobile)
            mobile.save_screenshot(str(DOCS / "web-mobile-list.png"))
            mobile.find_element(
                "css selector", '.conv-item[data-key="#launch"]'
            ).click()
            page.wait_message("take the last two")
            settle(mobile)
            mobile.save_screenshot(str(DOCS / "web-mobile-chat.png"))
        finally:
            quit_browser(mobile)
    finally:
        for client in clients.values():
            client.close()
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGTERM)
    for name in ("web-desktop.png", "web-mobile-list.png", "web-mobile-chat.png"):
        print(DOCS / name)


def settle(driver: object) -> None:
    """
    Let the page finish loading history, previews and pictures.
    """
    time.sleep(1.5)


if __name__ == "__main__":
    main()
