// rules.js: the page's checks of names, built from the server's rules.
// (tests/test_web_js.py also runs them against the server's own checks.)

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Rules } from "../../chat/web/static/js/rules.js";
import { served } from "./served.js";

const rules = new Rules(served);

const utf8 = (text) => new TextEncoder().encode(text).length;
// No lone surrogate (with the u flag, a pair is one code point).
const wellFormed = (text) => !/\p{Cs}/u.test(text);

describe("Rules", () => {
  it("takes its limits from the server", () => {
    assert.equal(rules.maxNameLength, served.max_name_length);
    assert.equal(rules.minPasswordLength, served.min_password_length);
    assert.equal(rules.maxFullNameLength, served.max_full_name_length);
    assert.equal(rules.maxFileNameBytes, served.file_name.max_bytes);
  });

  it("follows the served patterns, not a copy of them", () => {
    const strict = new Rules({ ...served, username: "[a-c]{1,3}" });
    assert.equal(strict.isUsername("abc"), true);
    assert.equal(strict.isUsername("messi"), false);
    assert.equal(strict.conversationKey("messi"), null);
    const looser = new Rules({ ...served, file_name: { ...served.file_name, forbidden: "/\\" } });
    assert.equal(looser.wireFileName("a:b?.txt"), "a:b?.txt");
  });
});

describe("isUsername", () => {
  it("accepts the server's usernames, whole", () => {
    for (const name of ["messi", "a", "a.b-c_d", "9", "x".repeat(served.max_name_length)]) {
      assert.equal(rules.isUsername(name), true, name);
    }
  });

  it("refuses anything else", () => {
    const bad = ["", "Messi", "two words", "messi@realm", "#team", "x".repeat(served.max_name_length + 1), "a\n"];
    for (const name of bad) assert.equal(rules.isUsername(name), false, JSON.stringify(name));
  });
});

describe("conversationKey", () => {
  it("gives users, #groups and users of other realms, trimmed and lowercased", () => {
    assert.equal(rules.conversationKey("Messi "), "messi");
    assert.equal(rules.conversationKey("#Team"), "#team");
    assert.equal(rules.conversationKey("budi@realm-b"), "budi@realm-b");
    assert.equal(rules.conversationKey(" Budi@Realm.B "), "budi@realm.b");
  });

  it("is null for what is not one", () => {
    const bad = ["", "two words", "a/b", "#", "#two words", "#team@realm", "budi@", "@realm", "budi@-realm", "a@b@c"];
    for (const text of bad) assert.equal(rules.conversationKey(text), null, text);
    assert.equal(rules.conversationKey(null), null);
    assert.equal(rules.conversationKey(undefined), null);
  });

  it("knows the keys it gives", () => {
    assert.equal(rules.isConversationKey("#team"), true);
    assert.equal(rules.isConversationKey("budi@realm-b"), true);
    assert.equal(rules.isConversationKey("Messi"), false);
    assert.equal(rules.isConversationKey(" messi"), false);
    assert.equal(rules.isConversationKey(null), false);
    assert.equal(rules.isConversationKey(7), false);
  });
});

describe("wireFileName", () => {
  it("keeps a name the server accepts as it is", () => {
    for (const name of ["report.pdf", "a__b.txt", "Résumé(2).docx", "naïve-ß.tar.gz", "x.y.z", "日本語.txt", "😀.png"]) {
      assert.equal(rules.wireFileName(name), name);
    }
  });

  it("makes one word without paths, hidden parts or refused characters", () => {
    assert.equal(rules.wireFileName("my report.pdf"), "my_report.pdf");
    assert.equal(rules.wireFileName("../../.bashrc"), "bashrc");
    assert.equal(rules.wireFileName("C:\\Users\\me\\notes.txt"), "C_Users_me_notes.txt");
    assert.equal(rules.wireFileName("a\tb\u0007.txt"), "a_b_.txt");
    assert.equal(rules.wireFileName("a:b\uff0fc?.txt"), "a_b_c_.txt");
    assert.equal(rules.wireFileName("a \u2028 b"), "a_b");
    assert.equal(rules.wireFileName("notes."), "notes");
    assert.equal(rules.wireFileName("a..b"), "a.b");
  });

  it("drops invisible formatting but keeps the joiners scripts need", () => {
    assert.equal(rules.wireFileName("invoice\u202efdp.exe"), "invoicefdp.exe");
    assert.equal(rules.wireFileName("zero\u200bwidth.txt"), "zerowidth.txt");
    assert.equal(rules.wireFileName("\u0645\u06cc\u200c\u062e\u0648\u0627\u0645.txt"), "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645.txt");
    assert.equal(rules.wireFileName("\ud83d\udc68\u200d\ud83d\udcbb.png"), "\ud83d\udc68\u200d\ud83d\udcbb.png");
  });

  it("renames what Windows reserves", () => {
    assert.equal(rules.wireFileName("CON.txt"), "_CON.txt");
    assert.equal(rules.wireFileName("nul"), "_nul");
    assert.equal(rules.wireFileName("com\u00b9.log"), "_com\u00b9.log");
    assert.equal(rules.wireFileName("conin$"), "_conin$");
    assert.equal(rules.wireFileName("console.txt"), "console.txt");
  });

  it("names a file that has no usable name 'file'", () => {
    for (const name of ["", null, "...", "///", "\u202e", " "]) assert.equal(rules.wireFileName(name), "file");
  });

  it("shortens a long name to the byte limit, keeping its extension", () => {
    const long = rules.wireFileName(`${"a".repeat(400)}.pdf`);
    assert.equal(utf8(long), served.file_name.max_bytes);
    assert.ok(long.endsWith("a.pdf"));
    const noExtension = rules.wireFileName("b".repeat(300));
    assert.equal(noExtension, "b".repeat(served.file_name.max_bytes));
  });

  it("shortens between characters, never inside one", () => {
    const emoji = rules.wireFileName(`${"😀".repeat(100)}.txt`);
    assert.ok(utf8(emoji) <= served.file_name.max_bytes);
    assert.ok(emoji.endsWith("😀.txt"));
    assert.ok(wellFormed(emoji));
    const three = rules.wireFileName("€".repeat(200));
    assert.equal(three, "€".repeat(Math.floor(served.file_name.max_bytes / 3)));
  });

  it("renames a device name before shortening, so it still fits", () => {
    const name = rules.wireFileName(`con.${"a".repeat(300)}`);
    assert.ok(name.startsWith("_con.a"), name);
    assert.equal(utf8(name), served.file_name.max_bytes);
  });

  it("never leaves '..' where it shortened", () => {
    // Cut by one character, the stem would end in "." before ".pdf".
    const name = rules.wireFileName(`${"a".repeat(served.file_name.max_bytes - 5)}.b.pdf`);
    assert.equal(name, `${"a".repeat(served.file_name.max_bytes - 5)}.pdf`);
  });
});
