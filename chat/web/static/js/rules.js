// The server's rules for names: usernames, #groups, users of other realms
// (user@realm), file names. The server serves them with the page's
// settings (chat/web/rules.py): nothing here copies a pattern or a limit,
// and tests/test_web_js.py checks these against the server's own checks.

const encoder = new TextEncoder();

// Whitespace ends a word of a request line: a file name has none.
const BLANK = /\s/u;
// Formatting characters are invisible: a file name loses them, while the
// other characters the server refuses become "_".
const INVISIBLE = /\p{Cf}/u;
// The longest extension kept when a long file name is shortened.
const MAX_EXTENSION = 16;

// A served pattern (Python's) as a RegExp for a whole string, as Python's
// fullmatch uses it.
function whole(pattern, flags = "") {
  return new RegExp(`^(?:${pattern})$`, `u${flags}`);
}

function utf8Length(text) {
  return encoder.encode(text).length;
}

export class Rules {
  // `served`: the "rules" of the page's settings (chat.web.rules.page_rules).
  constructor(served) {
    this.maxNameLength = served.max_name_length;
    this.minPasswordLength = served.min_password_length;
    this.maxPasswordLength = served.max_password_length;
    this.maxFullNameLength = served.max_full_name_length;
    this.username = whole(served.username);
    this.groupName = whole(served.group_name);
    this.realmId = whole(served.realm_id);
    const files = served.file_name;
    this.maxFileNameBytes = files.max_bytes;
    this.forbidden = new Set(files.forbidden);
    this.allowedFormatting = new Set(files.allowed_formatting);
    const categories = files.unsafe_categories.map((category) => `\\p{${category}}`).join("");
    this.unsafe = new RegExp(`[${categories}]`, "u");
    this.device = new RegExp(`^(?:${files.devices})(?:\\.|$)`, "iu");
  }

  isUsername(text) {
    return this.username.test(text);
  }

  // Whether `key` is a conversation key as conversationKey gives them.
  isConversationKey(key) {
    return typeof key === "string" && this.conversationKey(key) === key;
  }

  // A conversation key from what someone typed: "messi", "#team",
  // "budi@realm-b"; null if it is not one.
  conversationKey(text) {
    const key = String(text || "").trim().toLowerCase();
    if (key.startsWith("#")) return this.groupName.test(key.slice(1)) ? key : null;
    const at = key.indexOf("@");
    if (at < 0) return this.username.test(key) ? key : null;
    return this.username.test(key.slice(0, at)) && this.realmId.test(key.slice(at + 1)) ? key : null;
  }

  // The name a file goes to the server under: one word the server accepts
  // (no path, nothing hidden, invisible or refused on Windows, not too
  // long), as close to `name` as that allows, keeping the extension.
  wireFileName(name) {
    let clean = "";
    let replacing = false; // a run of refused characters becomes one "_"
    for (const c of String(name || "")) {
      if (this.allowedFormatting.has(c) || !(INVISIBLE.test(c) || this.refused(c))) {
        clean += c;
        replacing = false;
      } else if (INVISIBLE.test(c)) {
        continue;
      } else if (!replacing) {
        clean += "_";
        replacing = true;
      }
    }
    // No "..", nothing hidden (a leading "." or "_" left from a path), no
    // trailing ".".
    clean = clean
      .replace(/\.{2,}/g, ".")
      .replace(/^[._]+/, "")
      .replace(/\.+$/, "");
    if (!clean) clean = "file";
    // Device names Windows reserves (con, nul.txt, com1, ...): the server
    // refuses them, so the file goes as _con, _nul.txt, _com1.
    if (this.device.test(clean)) clean = `_${clean}`;
    if (utf8Length(clean) > this.maxFileNameBytes) clean = this.shorten(clean);
    return clean;
  }

  // Whether a character cannot be in a file name sent as a word.
  refused(c) {
    return BLANK.test(c) || this.forbidden.has(c) || this.unsafe.test(c);
  }

  // `name` (with no ".." and no trailing ".") cut to the longest byte
  // length, keeping its extension; cut between characters, never inside
  // one, and never right after a "." (that would leave ".." or a "." at
  // the end).
  shorten(name) {
    const chars = [...name];
    const dot = chars.lastIndexOf(".");
    const extension = dot > 0 && chars.length - dot <= MAX_EXTENSION ? chars.slice(dot).join("") : "";
    const stem = extension ? chars.slice(0, dot) : chars;
    let bytes = utf8Length(stem.join("")) + utf8Length(extension);
    while (stem.length > 1 && (bytes > this.maxFileNameBytes || stem[stem.length - 1] === ".")) {
      bytes -= utf8Length(stem.pop());
    }
    return stem.join("") + extension;
  }
}
