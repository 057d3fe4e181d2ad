// What the page knows while logged in (a Session): conversations and
// their messages, who is online, full names, the open conversation, the
// messages waiting to be sent, what can be acknowledged. Messages from the
// server are kept by id, so one that arrives twice (pushed again after a
// reconnect, or also in a history page) is kept once. The user's own
// messages are shown at once, without an id, and take their id when a
// history page shows them.

import { parseDate } from "./format.js";

const MAX_ONLINE_LISTED = 50;
// Unread message ids kept across a reload, per conversation.
const MAX_UNREAD_KEPT = 500;

export class Conversation {
  constructor(key) {
    this.key = key;
    this.isGroup = key.startsWith("#");
    this.name = this.isGroup ? key.slice(1) : key;
    this.byId = new Map();
    this.pending = [];
    this.unreadIds = new Set(); // messages that arrived while elsewhere
    this.loaded = false; // the newest history page was read since connecting
    this.hasMore = true; // older history pages may exist
    this.loading = false;
    this.error = null; // why history could not be read (an error code)
    this.member = null; // groups: whether the user is a member
    this.members = [];
    this.listed = false; // shown in the list even without messages
  }

  get unread() {
    return this.unreadIds.size;
  }

  messages() {
    const known = [...this.byId.values()].sort((a, b) => a.id - b.id);
    return known.concat(this.pending);
  }

  oldestId() {
    let oldest = null;
    for (const id of this.byId.keys()) if (oldest === null || id < oldest) oldest = id;
    return oldest;
  }

  last() {
    if (this.pending.length) return this.pending[this.pending.length - 1];
    let newest = null;
    for (const message of this.byId.values()) {
      if (newest === null || message.id > newest.id) newest = message;
    }
    return newest;
  }

  lastTime() {
    const last = this.last();
    return last ? parseDate(last.sent_at).getTime() : 0;
  }

  isEmpty() {
    return this.byId.size === 0 && this.pending.length === 0;
  }

  // Whether a message of the user's may or may not have reached the
  // server (the connection was lost while sending it).
  isUnsure() {
    return this.pending.some((local) => local.status === "unknown");
  }

  // Those that a history page did not show after all: not sent.
  failUnsure(why) {
    for (const local of this.pending) {
      if (local.status === "unknown") {
        local.status = "failed";
        local.error = why;
      }
    }
  }
}

export class ChatState {
  constructor(me) {
    this.me = me;
    this.fullNames = new Map();
    this.online = new Map();
    this.conversations = new Map();
    this.seen = new Set();
    this.groups = new Map();
  }

  conversation(key) {
    let conversation = this.conversations.get(key);
    if (conversation === undefined) {
      conversation = new Conversation(key);
      const group = this.groups.get(conversation.name);
      if (conversation.isGroup && group) {
        conversation.member = true;
        conversation.members = group.members;
      }
      this.conversations.set(key, conversation);
    }
    return conversation;
  }

  keyFor(message) {
    if (message.group) return `#${message.group}`;
    return message.from === this.me ? message.to : message.from;
  }

  // A message from the server (pushed, or in a history page). Returns the
  // conversation, and whether the message is new to the page.
  add(message) {
    const conversation = this.conversation(this.keyFor(message));
    if (typeof message.id !== "number") return { conversation, added: false };
    if (this.seen.has(message.id)) return { conversation, added: false };
    if (message.from === this.me) this.adopt(conversation, message);
    else if (message.msg_from) this.fullNames.set(message.from, message.msg_from);
    if (message.to === this.me && message.msg_to) this.fullNames.set(this.me, message.msg_to);
    else if (message.msg_to && !message.group) this.fullNames.set(message.to, message.msg_to);
    this.seen.add(message.id);
    conversation.byId.set(message.id, message);
    return { conversation, added: true };
  }

  // The server's copy of a message this page sent: it replaces the local one.
  adopt(conversation, message) {
    const index = conversation.pending.findIndex(
      (local) =>
        (local.status === "sent" || local.status === "sending" || local.status === "unknown") &&
        local.msg === message.msg &&
        (local.file_name || null) === (message.file_name || null),
    );
    if (index < 0) return;
    const [local] = conversation.pending.splice(index, 1);
    local.adopted = true;
    if (local.fileUrl) message.fileUrl = local.fileUrl;
  }

  setGroups(groups) {
    this.groups = new Map(groups.map((group) => [group.name, group]));
    for (const conversation of this.conversations.values()) {
      if (!conversation.isGroup) continue;
      const group = this.groups.get(conversation.name);
      conversation.member = group !== undefined;
      conversation.members = group ? group.members : [];
    }
    for (const group of groups) {
      const conversation = this.conversation(`#${group.name}`);
      conversation.listed = true;
      conversation.member = true;
      conversation.members = group.members;
    }
  }

  setOnline(users) {
    this.online = new Map(users.map((user) => [user.username, user.full_name]));
    for (const [username, fullName] of this.online) this.fullNames.set(username, fullName);
  }

  presence(event) {
    if (event.online) this.online.set(event.user, event.full_name);
    else this.online.delete(event.user);
    if (event.full_name) this.fullNames.set(event.user, event.full_name);
  }

  title(key) {
    if (key.startsWith("#")) return key;
    return this.fullNames.get(key) || key;
  }

  // The conversations to list: with messages, listed (groups, opened), or
  // someone online; the most recent first, then by name.
  listed() {
    const keys = new Set();
    for (const conversation of this.conversations.values()) {
      if (!conversation.isEmpty() || conversation.listed) keys.add(conversation.key);
    }
    // Everyone online is listed too, up to a point (a big server).
    let online = 0;
    for (const username of [...this.online.keys()].sort()) {
      if (username === this.me || keys.has(username)) continue;
      if (++online > MAX_ONLINE_LISTED) break;
      keys.add(username);
    }
    return [...keys]
      .map((key) => this.conversation(key))
      .sort((a, b) => b.lastTime() - a.lastTime() || a.key.localeCompare(b.key));
  }

  unreadTotal() {
    let total = 0;
    for (const conversation of this.conversations.values()) total += conversation.unread;
    return total;
  }

  // The unread message ids by conversation key, to keep across a reload.
  unreadSnapshot() {
    const unread = {};
    for (const conversation of this.conversations.values()) {
      if (conversation.unread) unread[conversation.key] = [...conversation.unreadIds].slice(-MAX_UNREAD_KEPT);
    }
    return unread;
  }

  // Unread ids from unreadSnapshot() (as JSON read back: anything that is
  // not a conversation key of `rules` with a list of ids is left out).
  restoreUnread(snapshot, rules) {
    if (snapshot === null || typeof snapshot !== "object") return;
    for (const [key, ids] of Object.entries(snapshot)) {
      if (rules.isConversationKey(key) && Array.isArray(ids)) {
        this.conversation(key).unreadIds = new Set(ids.filter(Number.isInteger));
      }
    }
  }
}

// Acknowledgements: the newest message id the page was given to show,
// and the newest acknowledged (`ack <token> <id>` covers every older one).
export class Acks {
  constructor() {
    this.wanted = 0;
    this.sent = 0;
  }

  saw(id) {
    if (id > this.wanted) this.wanted = id;
  }

  // The id to acknowledge now (counted as sent), or null if none.
  next() {
    if (this.wanted <= this.sent) return null;
    this.sent = this.wanted;
    return this.sent;
  }

  // Acknowledging `upTo` failed: the next one acknowledges it again.
  failed(upTo) {
    if (this.sent === upTo) this.sent = 0;
  }

  reset() {
    this.wanted = this.sent = 0;
  }
}

// One login: who, the session token, what the page knows (`chat`), the
// open conversation, the user's messages waiting to be sent, and the
// acknowledgements. The page holds one while logged in, none otherwise.
export class Session {
  constructor(username, token) {
    this.username = username;
    this.token = token;
    this.chat = new ChatState(username);
    this.active = null; // the open conversation's key
    this.outbox = []; // {key, local}: the user's messages to send, in order
    this.flushing = false; // the outbox is being sent
    this.localIds = 0;
    this.acks = new Acks();
    this.loggingOut = false;
  }

  // What the tab keeps across a reload (the token, never the password).
  saved() {
    return JSON.stringify({ username: this.username, token: this.token });
  }

  // The session saved() gave, or null if `text` is none, or damaged.
  static restore(text, rules) {
    let saved = null;
    try {
      saved = JSON.parse(text || "null");
    } catch (error) {
      return null;
    }
    if (saved === null || typeof saved !== "object") return null;
    if (typeof saved.username !== "string" || !rules.isUsername(saved.username)) return null;
    if (typeof saved.token !== "string") return null;
    return new Session(saved.username, saved.token);
  }

  // A message the user writes to `key` (`fields`: msg, or a file's):
  // shown at once, without an id, and queued to be sent.
  queue(key, fields, now = new Date()) {
    const group = key.startsWith("#");
    const local = {
      localId: ++this.localIds,
      from: this.username,
      to: group ? this.username : key,
      group: group ? key.slice(1) : undefined,
      msg_from: this.chat.fullNames.get(this.username) || this.username,
      sent_at: now.toISOString(),
      status: "queued",
      ...fields,
    };
    this.chat.conversation(key).pending.push(local);
    this.outbox.push({ key, local });
    return local;
  }

  // Queues a message that failed again; false if it cannot be (a file
  // that is no longer at hand after a reload: it says so).
  retry(local) {
    local.error = undefined;
    if (local.file_name && !local.file) {
      local.status = "failed";
      local.error = "pick the file again";
      return false;
    }
    local.status = "queued";
    if (local.file_name) local.progress = 0;
    const key = this.chat.keyFor(local);
    const conversation = this.chat.conversation(key);
    if (!conversation.pending.includes(local)) conversation.pending.push(local);
    this.outbox.push({ key, local });
    return true;
  }
}
