// The page's verdicts on names, for tests/test_web_js.py to hold against
// the server's: reads {"rules": <served rules>, "names": [...]} on
// standard input and writes, for each name, whether it is a username, its
// conversation key (with the trimmed, lowercased text it came from), and
// the file name it would be sent under.

import { readFileSync } from "node:fs";

import { Rules } from "../../chat/web/static/js/rules.js";

const { rules: served, names } = JSON.parse(readFileSync(0, "utf-8"));
const rules = new Rules(served);
const verdicts = names.map((name) => ({
  username: rules.isUsername(name),
  normalized: name.trim().toLowerCase(),
  key: rules.conversationKey(name),
  file: rules.wireFileName(name),
}));
process.stdout.write(JSON.stringify(verdicts));
