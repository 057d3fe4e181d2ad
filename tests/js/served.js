// The server's rules for names (chat.web.rules.page_rules), as the page
// gets them: from CHAT_WEB_RULES (tests/test_web_js.py sets it), or else
// from the project's Python (PYTHON, .venv/bin/python, or python3), so
// that `npm test` works on its own too.

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));

function load() {
  if (process.env.CHAT_WEB_RULES) return JSON.parse(process.env.CHAT_WEB_RULES);
  const venv = `${root}.venv/bin/python`;
  const python = process.env.PYTHON || (existsSync(venv) ? venv : "python3");
  const code = "import json; from chat.web.rules import page_rules; print(json.dumps(page_rules()))";
  return JSON.parse(execFileSync(python, ["-c", code], { cwd: root, encoding: "utf-8" }));
}

export const served = load();
