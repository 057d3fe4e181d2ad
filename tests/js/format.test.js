// format.js: text, sizes, dates, files and error messages.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ConnectionLost, ServerError } from "../../chat/web/static/js/connection.js";
import * as fmt from "../../chat/web/static/js/format.js";

describe("oneLine", () => {
  it("turns line breaks and the blanks around them into one space", () => {
    assert.equal(fmt.oneLine("  line one\r\n\n line two \u0000 "), "line one line two");
    assert.equal(fmt.oneLine("a\rb\nc"), "a b c");
  });

  it("keeps other spacing as it is", () => {
    assert.equal(fmt.oneLine("a  b\tc"), "a  b\tc");
    assert.equal(fmt.oneLine(42), "42");
  });
});

describe("humanSize", () => {
  it("says bytes below a KB, one decimal below ten units, whole units above", () => {
    assert.equal(fmt.humanSize(0), "0 B");
    assert.equal(fmt.humanSize(512), "512 B");
    assert.equal(fmt.humanSize(1023), "1023 B");
    assert.equal(fmt.humanSize(1024), "1.0 KB");
    assert.equal(fmt.humanSize(1536), "1.5 KB");
    assert.equal(fmt.humanSize(300 * 1024), "300 KB");
    assert.equal(fmt.humanSize(4 << 20), "4.0 MB");
    assert.equal(fmt.humanSize(1.5 * 2 ** 30), "1.5 GB");
    assert.equal(fmt.humanSize(3 * 2 ** 40), "3072 GB");
  });
});

describe("dates", () => {
  const now = new Date(2026, 4, 20, 15, 30); // local time
  // A year as the dates show it (in the digits of the test's locale).
  const year = (number) => new Intl.NumberFormat(undefined, { useGrouping: false }).format(number);

  it("parses ISO dates, and takes anything else for now", () => {
    assert.equal(fmt.parseDate("2026-01-01T10:00:00Z").getTime(), Date.UTC(2026, 0, 1, 10));
    const before = Date.now();
    const fallback = fmt.parseDate("not a date").getTime();
    assert.ok(fallback >= before && fallback <= Date.now());
    assert.ok(Math.abs(fmt.parseDate(undefined).getTime() - Date.now()) < 5000);
  });

  it("keys days by the local calendar date", () => {
    assert.equal(fmt.dayKey(new Date(2026, 0, 5, 0, 0)), "2026-1-5");
    assert.equal(fmt.dayKey(new Date(2026, 0, 5, 23, 59)), "2026-1-5");
    assert.notEqual(fmt.dayKey(new Date(2026, 0, 5)), fmt.dayKey(new Date(2026, 0, 6)));
  });

  it("labels today and yesterday by name, other days by date", () => {
    assert.equal(fmt.dayLabel(new Date(2026, 4, 20, 0, 1), now), "Today");
    assert.equal(fmt.dayLabel(new Date(2026, 4, 19, 23, 59), now), "Yesterday");
    const earlier = fmt.dayLabel(new Date(2026, 2, 3), now);
    assert.ok(!["Today", "Yesterday"].includes(earlier));
    assert.ok(!earlier.includes(year(2026)), earlier);
    assert.ok(fmt.dayLabel(new Date(2025, 11, 31), now).includes(year(2025)));
  });

  it("labels yesterday across a month and a year", () => {
    assert.equal(fmt.dayLabel(new Date(2026, 0, 31, 12), new Date(2026, 1, 1, 8)), "Yesterday");
    assert.equal(fmt.dayLabel(new Date(2025, 11, 31, 12), new Date(2026, 0, 1, 8)), "Yesterday");
  });

  it("says when briefly for the list: a time, Yesterday, a weekday, a date", () => {
    const today = new Date(2026, 4, 20, 9, 5);
    assert.equal(fmt.shortWhen(today, now), fmt.timeLabel(today));
    assert.equal(fmt.shortWhen(new Date(2026, 4, 19, 9, 5), now), "Yesterday");
    const monday = new Date(2026, 4, 18, 9, 5);
    assert.equal(fmt.shortWhen(monday, now), monday.toLocaleDateString(undefined, { weekday: "short" }));
    const march = fmt.shortWhen(new Date(2026, 2, 3), now);
    assert.ok(!march.includes(year(2026)), march);
    assert.ok(fmt.shortWhen(new Date(2024, 2, 3), now).includes(year(2024)));
  });
});

describe("saveName", () => {
  it("keeps what the sender wrote, without paths or a leading dot", () => {
    assert.equal(fmt.saveName("ok name.png"), "ok name.png");
    assert.equal(fmt.saveName("../etc/passwd"), "_etc_passwd");
    assert.equal(fmt.saveName("C:\\temp\\x.txt"), "C_temp_x.txt");
    assert.equal(fmt.saveName(".hidden"), "hidden");
    assert.equal(fmt.saveName("a\u0000b\u001fc.txt"), "a_b_c.txt");
    assert.equal(fmt.saveName('a<b>"c|d?*.txt'), "a_b_c_d_.txt");
  });

  it("falls back to 'download', and cuts at 200 characters", () => {
    assert.equal(fmt.saveName(""), "download");
    assert.equal(fmt.saveName(null), "download");
    assert.equal(fmt.saveName(" . "), "download");
    assert.equal(fmt.saveName("x".repeat(300)).length, 200);
  });
});

describe("files", () => {
  it("knows the picture types a browser shows", () => {
    assert.equal(fmt.imageType("a.PNG"), "image/png");
    assert.equal(fmt.imageType("photo.jpeg"), "image/jpeg");
    assert.equal(fmt.imageType("x.jpg"), "image/jpeg");
    assert.equal(fmt.imageType("anim.gif"), "image/gif");
    assert.equal(fmt.imageType("a.webp"), "image/webp");
    assert.equal(fmt.imageType("a.svg"), null);
    assert.equal(fmt.imageType("png"), null);
    assert.equal(fmt.imageType("notes.txt"), null);
  });

  it("decodes base64 to bytes", () => {
    assert.deepEqual([...fmt.base64ToBytes("aGk=")], [104, 105]);
    assert.deepEqual([...fmt.base64ToBytes("AP8=")], [0, 255]);
    assert.deepEqual([...fmt.base64ToBytes("")], []);
  });
});

describe("avatars", () => {
  it("takes initials from two words, else the first two letters", () => {
    assert.equal(fmt.initials("Jordan Henderson"), "JH");
    assert.equal(fmt.initials("lionel.messi"), "LM");
    assert.equal(fmt.initials("messi"), "ME");
    assert.equal(fmt.initials("#team"), "TE");
    assert.equal(fmt.initials(""), "?");
  });

  it("gives a name one of eight colours, always the same", () => {
    const names = ["messi", "henderson", "lineker", "#team", "ayu", "budi@realm-b", "😀"];
    for (const name of names) {
      assert.match(fmt.hueClass(name), /^hue-[0-7]$/);
      assert.equal(fmt.hueClass(name), fmt.hueClass(name));
    }
    assert.ok(new Set(names.map(fmt.hueClass)).size > 1);
  });
});

describe("friendlyError", () => {
  it("explains an error by its code", () => {
    const reply = { status: "ERROR", message: "User Tidak Ada", code: "unknown_user" };
    assert.equal(fmt.friendlyError(new ServerError(reply)), "There is no account with that username.");
    assert.equal(fmt.friendlyError({ code: "no_session", message: "Session Tidak Ditemukan" }), "Your session has ended. Please log in again.");
    assert.equal(fmt.friendlyError(new ConnectionLost()), "The connection to the server was lost.");
  });

  it("never reads the message to decide, but shows it for a code it does not know", () => {
    assert.equal(fmt.friendlyError({ code: "not_owner", message: "User Tidak Ada" }), "User Tidak Ada");
    assert.equal(fmt.friendlyError({ code: "", message: "wrong password" }), "wrong password");
    assert.equal(fmt.friendlyError({}), "Something went wrong.");
    assert.equal(fmt.friendlyError(null), "Something went wrong.");
  });
});
