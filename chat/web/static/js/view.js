// Turning the state into DOM. Text from the network only ever goes into
// the page as textContent or attribute values, never as HTML.

import {
  base64ToBytes,
  dayKey,
  dayLabel,
  hueClass,
  humanSize,
  imageType,
  initials,
  parseDate,
  saveName,
  shortWhen,
  timeLabel,
} from "./format.js";

export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.class) node.className = options.class;
  if (options.text !== undefined) node.textContent = options.text;
  for (const [name, value] of Object.entries(options.attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function icon(name, className = "icon") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", className);
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `/icons.svg#${name}`);
  svg.append(use);
  return svg;
}

// Rendering reuses the node of anything that did not change, and moves
// nodes only where the order changed: a re-render (a presence event, a
// new message) never resets a selection, a focused button, or a click in
// progress.
function keyed(next, previous, key, signature, build) {
  const hit = previous.get(key);
  const entry = hit && hit.signature === signature ? hit : { signature, node: build() };
  next.set(key, entry);
  return entry.node;
}

function reconcile(parent, nodes) {
  let current = parent.firstChild;
  for (const node of nodes) {
    if (node === current) {
      current = current.nextSibling;
      continue;
    }
    parent.insertBefore(node, current);
  }
  while (current) {
    const next = current.nextSibling;
    current.remove();
    current = next;
  }
}

const caches = new WeakMap();

function cacheFor(parent, scope) {
  const cached = caches.get(parent);
  if (cached && cached.scope === scope) return cached.entries;
  return new Map();
}

export function avatar(key, title, online) {
  const node = el("span", {
    class: `avatar ${key.startsWith("#") ? "group" : ""} ${hueClass(key)}`,
    attrs: { "aria-hidden": "true" },
    text: key.startsWith("#") ? "#" : initials(title),
  });
  if (online !== undefined) node.append(el("span", { class: `presence ${online ? "online" : "offline"}` }));
  return node;
}

function preview(message, me) {
  if (!message) return "";
  const who = message.from === me ? "You: " : "";
  return who + message.msg;
}

export function renderList(list, empty, state, activeKey) {
  const previous = cacheFor(list, "list");
  const next = new Map();
  const items = [];
  for (const conversation of state.listed()) {
    const key = conversation.key;
    const title = state.title(key);
    const last = conversation.last();
    const online = conversation.isGroup ? undefined : state.online.has(key);
    const when = last ? shortWhen(parseDate(last.sent_at)) : "";
    let sub = preview(last, state.me);
    if (!sub) {
      if (conversation.isGroup) sub = `${conversation.members.length} members`;
      else sub = online ? "Online" : "";
    }
    const label = [title, conversation.unread ? `${conversation.unread} unread` : "", online ? "online" : ""]
      .filter(Boolean)
      .join(", ");
    const file = Boolean(last && last.file_name);
    const signature = JSON.stringify([title, when, sub, file, conversation.unread, online, key === activeKey]);
    const build = () => el("li", {}, [listButton(key, title, when, sub, file, label, online, conversation, activeKey)]);
    items.push(keyed(next, previous, key, signature, build));
  }
  caches.set(list, { scope: "list", entries: next });
  reconcile(list, items);
  empty.hidden = items.length > 0;
}

function listButton(key, title, when, sub, file, label, online, conversation, activeKey) {
  return el(
    "button",
    {
      class: `conv-item${key === activeKey ? " active" : ""}${conversation.unread ? " unread" : ""}`,
      attrs: {
        type: "button",
        "data-key": key,
        "aria-current": key === activeKey ? "true" : null,
        "aria-label": label,
      },
    },
    [
      avatar(key, title, online),
      el("span", { class: "conv-main" }, [
        el("span", { class: "conv-top" }, [
          el("span", { class: "conv-title", text: title }),
          el("span", { class: "conv-when", text: when }),
        ]),
        el("span", { class: "conv-bottom" }, [
          el("span", { class: "conv-preview" }, [
            file ? icon("file") : null,
            el("span", { class: "conv-preview-text", text: sub }),
          ]),
          conversation.unread
            ? el("span", { class: "badge", text: conversation.unread > 99 ? "99+" : String(conversation.unread) })
            : null,
        ]),
      ]),
    ],
  );
}

// A blob: URL for a received file, made once per message.
function fileUrl(message) {
  if (message.fileUrl) return message.fileUrl;
  if (!message.file_content) return null;
  try {
    const type = imageType(message.file_name) || "application/octet-stream";
    const blob = new Blob([base64ToBytes(message.file_content)], { type });
    message.fileUrl = URL.createObjectURL(blob);
  } catch (error) {
    return null;
  }
  return message.fileUrl;
}

function fileCard(message) {
  const url = fileUrl(message);
  const name = message.file_name;
  const card = el("div", { class: "file" });
  if (url && imageType(name)) {
    card.append(el("img", { class: "file-preview", attrs: { src: url, alt: name, loading: "lazy" } }));
  }
  card.append(
    el("div", { class: "file-row" }, [
      icon("file", "file-icon"),
      el("span", { class: "file-text" }, [
        el("span", { class: "file-name", text: name }),
        el("span", { class: "file-size", text: humanSize(message.file_size || 0) }),
      ]),
      url && message.status !== "sending"
        ? el(
            "a",
            {
              class: "file-download",
              attrs: {
                href: url,
                download: saveName(name),
                "data-testid": "file-download",
                "aria-label": `Download ${name}`,
                title: "Download",
              },
            },
            [icon("download")],
          )
        : null,
    ]),
  );
  if (message.status === "sending" && message.progress !== undefined) {
    card.append(
      el("progress", {
        class: "upload-progress",
        attrs: { max: "1", value: String(message.progress), "aria-label": `Uploading ${name}` },
      }),
    );
  }
  return card;
}

const STATUS = {
  queued: "Waiting for connection",
  sending: "Sending…",
  sent: "Sent",
  unknown: "Checking…",
};

export function renderMessages(list, conversation, state, onRetry) {
  const cached = cacheFor(list, conversation);
  const next = new Map();
  const nodes = [];
  let lastDay = null;
  let previous = null;
  for (const message of conversation.messages()) {
    const date = parseDate(message.sent_at);
    const day = dayKey(date);
    if (day !== lastDay) {
      const label = dayLabel(date);
      nodes.push(
        keyed(next, cached, `day:${day}`, label, () => el("li", { class: "day" }, [el("span", { text: label })])),
      );
      lastDay = day;
      previous = null;
    }
    const run =
      previous !== null && previous.from === message.from && date - parseDate(previous.sent_at) < 5 * 60 * 1000;
    const key = message.id !== undefined ? `id:${message.id}` : `local:${message.localId}`;
    const signature = JSON.stringify([run, message.status, message.error]);
    nodes.push(keyed(next, cached, key, signature, () => messageNode(message, date, run, conversation, state, onRetry)));
    previous = message;
  }
  caches.set(list, { scope: conversation, entries: next });
  reconcile(list, nodes);
}

function messageNode(message, date, run, conversation, state, onRetry) {
  const mine = message.from === state.me;
  const classes = ["msg", mine ? "mine" : "theirs", run ? "run" : "first"];
  if (message.status === "failed") classes.push("failed");
  const body = [];
  if (conversation.isGroup && !mine && !run) {
    body.push(el("span", { class: "sender", text: message.msg_from || message.from }));
  }
  const bubble = el("div", { class: "bubble" });
  if (message.file_name) bubble.append(fileCard(message));
  else bubble.append(el("p", { class: "text", text: message.msg }));
  const meta = el("span", { class: "meta" }, [
    el("time", { text: timeLabel(date), attrs: { datetime: date.toISOString(), title: date.toLocaleString() } }),
  ]);
  if (mine && message.status && message.status !== "failed") {
    meta.append(el("span", { class: `status ${message.status}`, text: STATUS[message.status] || "" }));
  }
  bubble.append(meta);
  body.push(bubble);
  if (message.status === "failed") {
    const retry = el("button", { class: "link retry", text: "Retry", attrs: { type: "button" } });
    retry.addEventListener("click", () => onRetry(message));
    body.push(
      el("p", { class: "send-error", attrs: { role: "alert" } }, [
        el("span", { text: `Not sent: ${message.error || "failed"}. ` }),
        retry,
      ]),
    );
  }
  return el(
    "li",
    {
      class: classes.join(" "),
      attrs: { "data-testid": "message", "data-id": message.id ?? null, "data-local": message.localId ?? null },
    },
    body,
  );
}

export function toast(container, text, kind = "info", ms = 5000) {
  const node = el("div", { class: `toast ${kind}`, text });
  container.append(node);
  setTimeout(() => node.remove(), ms);
}
