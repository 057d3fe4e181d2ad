// state.js: what the page knows while logged in.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Rules } from "../../chat/web/static/js/rules.js";
import { Acks, ChatState, Conversation, Session } from "../../chat/web/static/js/state.js";
import { served } from "./served.js";

const rules = new Rules(served);

function message(id, from, to, msg, fields = {}) {
  return { id, from, to, msg, sent_at: `2026-01-01T10:${String(id).padStart(2, "0")}:00Z`, ...fields };
}

describe("Conversation", () => {
  it("tells users from groups by the key", () => {
    const group = new Conversation("#team");
    assert.equal(group.isGroup, true);
    assert.equal(group.name, "team");
    const user = new Conversation("henderson");
    assert.equal(user.isGroup, false);
    assert.equal(user.name, "henderson");
  });

  it("lists the server's messages by id, then the user's waiting ones", () => {
    const conversation = new Conversation("henderson");
    assert.equal(conversation.isEmpty(), true);
    assert.equal(conversation.oldestId(), null);
    assert.equal(conversation.last(), null);
    assert.equal(conversation.lastTime(), 0);
    conversation.byId.set(9, message(9, "henderson", "messi", "b"));
    conversation.byId.set(3, message(3, "henderson", "messi", "a"));
    assert.deepEqual(conversation.messages().map((m) => m.id), [3, 9]);
    assert.equal(conversation.oldestId(), 3);
    assert.equal(conversation.last().id, 9);
    assert.equal(conversation.lastTime(), Date.UTC(2026, 0, 1, 10, 9));
    const local = { localId: 1, msg: "c", sent_at: "2026-01-01T11:00:00Z" };
    conversation.pending.push(local);
    assert.deepEqual(conversation.messages().map((m) => m.id ?? m.localId), [3, 9, 1]);
    assert.equal(conversation.last(), local);
    assert.equal(conversation.isEmpty(), false);
  });

  it("counts unread messages by id", () => {
    const conversation = new Conversation("henderson");
    conversation.unreadIds.add(4);
    conversation.unreadIds.add(4);
    conversation.unreadIds.add(5);
    assert.equal(conversation.unread, 2);
  });

  it("fails the messages that may not have been sent once history says they were not", () => {
    const conversation = new Conversation("henderson");
    const unsure = { localId: 1, status: "unknown" };
    const queued = { localId: 2, status: "queued" };
    conversation.pending.push(unsure, queued);
    assert.equal(conversation.isUnsure(), true);
    conversation.failUnsure("lost");
    assert.deepEqual(unsure, { localId: 1, status: "failed", error: "lost" });
    assert.equal(queued.status, "queued");
    assert.equal(conversation.isUnsure(), false);
  });
});

describe("ChatState", () => {
  it("keeps a message that arrives twice once", () => {
    const state = new ChatState("messi");
    const pushed = message(7, "henderson", "messi", "hi", { msg_from: "Jordan Henderson" });
    assert.equal(state.add(pushed).added, true);
    const again = state.add({ ...pushed });
    assert.equal(again.added, false);
    assert.equal(again.conversation.key, "henderson");
    assert.equal(state.conversation("henderson").byId.size, 1);
  });

  it("files messages under the other user, or the group", () => {
    const state = new ChatState("messi");
    assert.equal(state.keyFor(message(1, "henderson", "messi", "x")), "henderson");
    assert.equal(state.keyFor(message(2, "messi", "lineker", "x")), "lineker");
    assert.equal(state.keyFor(message(3, "ayu", "messi", "x", { group: "team" })), "#team");
    assert.equal(state.keyFor(message(4, "budi@realm-b", "messi", "x")), "budi@realm-b");
  });

  it("ignores a message without an id", () => {
    const state = new ChatState("messi");
    const { conversation, added } = state.add({ from: "henderson", to: "messi", msg: "x" });
    assert.equal(added, false);
    assert.equal(conversation.isEmpty(), true);
  });

  it("learns full names from messages", () => {
    const state = new ChatState("messi");
    state.add(message(1, "henderson", "messi", "x", { msg_from: "Jordan Henderson", msg_to: "Lionel Messi" }));
    state.add(message(2, "messi", "lineker", "y", { msg_from: "Lionel Messi", msg_to: "Gary Lineker" }));
    state.add(message(3, "ayu", "messi", "z", { group: "team", msg_from: "Ayu", msg_to: "Lionel Messi" }));
    assert.equal(state.title("henderson"), "Jordan Henderson");
    assert.equal(state.title("lineker"), "Gary Lineker");
    assert.equal(state.title("messi"), "Lionel Messi");
    assert.equal(state.title("ayu"), "Ayu");
    assert.equal(state.title("#team"), "#team");
    assert.equal(state.title("nobody"), "nobody");
  });

  it("replaces the user's own waiting message with the server's copy", () => {
    const state = new ChatState("messi");
    const mine = state.conversation("henderson");
    const blob = "blob:local";
    const sentFile = { localId: 1, from: "messi", msg: "a.png", file_name: "a.png", status: "sent", fileUrl: blob };
    const sentText = { localId: 2, from: "messi", msg: "yo", status: "sent" };
    const failed = { localId: 3, from: "messi", msg: "yo", status: "failed" };
    mine.pending.push(sentFile, sentText, failed);
    state.add(message(9, "messi", "henderson", "yo"));
    assert.deepEqual(mine.messages().map((m) => m.id ?? `local ${m.localId}`), [9, "local 1", "local 3"]);
    assert.equal(sentText.adopted, true);
    const copy = message(10, "messi", "henderson", "a.png", { file_name: "a.png" });
    state.add(copy);
    assert.equal(copy.fileUrl, blob);
    assert.deepEqual(mine.pending, [failed]);
  });

  it("knows the groups the user is in, and forgets those left", () => {
    const state = new ChatState("messi");
    state.conversation("#old").member = true;
    state.setGroups([{ name: "team", members: ["messi", "ayu"] }]);
    const team = state.conversation("#team");
    assert.equal(team.member, true);
    assert.equal(team.listed, true);
    assert.deepEqual(team.members, ["messi", "ayu"]);
    assert.equal(state.conversation("#old").member, false);
    assert.deepEqual(state.conversation("#old").members, []);
  });

  it("knows who is online, from the list and from presence events", () => {
    const state = new ChatState("messi");
    state.setOnline([{ username: "henderson", full_name: "Jordan Henderson" }]);
    assert.equal(state.online.has("henderson"), true);
    assert.equal(state.title("henderson"), "Jordan Henderson");
    state.presence({ user: "lineker", full_name: "Gary Lineker", online: true });
    state.presence({ user: "henderson", full_name: "Jordan Henderson", online: false });
    assert.deepEqual([...state.online.keys()], ["lineker"]);
    assert.equal(state.title("henderson"), "Jordan Henderson");
  });

  it("lists the newest conversation first, then by name, and who is online", () => {
    const state = new ChatState("messi");
    state.add(message(1, "henderson", "messi", "old"));
    state.add(message(5, "lineker", "messi", "new"));
    state.conversation("#team").listed = true;
    state.conversation("quiet");
    state.setOnline([
      { username: "messi", full_name: "Lionel Messi" },
      { username: "zed", full_name: "Zed" },
      { username: "henderson", full_name: "Jordan Henderson" },
    ]);
    assert.deepEqual(state.listed().map((c) => c.key), ["lineker", "henderson", "#team", "zed"]);
  });

  it("lists at most fifty of those online without a conversation", () => {
    const state = new ChatState("messi");
    const users = Array.from({ length: 80 }, (_, i) => ({ username: `u${String(i).padStart(2, "0")}`, full_name: "" }));
    state.setOnline(users);
    const listed = state.listed().map((c) => c.key);
    assert.equal(listed.length, 50);
    assert.equal(listed[0], "u00");
  });

  it("counts unread messages, and keeps them across a reload", () => {
    const state = new ChatState("messi");
    state.conversation("henderson").unreadIds = new Set([1, 2]);
    state.conversation("#team").unreadIds = new Set([3]);
    state.conversation("lineker");
    assert.equal(state.unreadTotal(), 3);
    const snapshot = JSON.parse(JSON.stringify(state.unreadSnapshot()));
    assert.deepEqual(snapshot, { henderson: [1, 2], "#team": [3] });
    const reloaded = new ChatState("messi");
    reloaded.restoreUnread(snapshot, rules);
    assert.equal(reloaded.unreadTotal(), 3);
    assert.deepEqual([...reloaded.conversation("henderson").unreadIds], [1, 2]);
  });

  it("keeps the newest 500 unread ids of a conversation", () => {
    const state = new ChatState("messi");
    state.conversation("henderson").unreadIds = new Set(Array.from({ length: 600 }, (_, i) => i));
    const kept = state.unreadSnapshot().henderson;
    assert.equal(kept.length, 500);
    assert.equal(kept[0], 100);
  });

  it("restores only what looks right from a damaged snapshot", () => {
    const state = new ChatState("messi");
    state.restoreUnread({ "Not A Key": [1], henderson: "1,2", "#team": [1, "2", 3.5, 4] }, rules);
    state.restoreUnread(null, rules);
    state.restoreUnread("{}", rules);
    assert.deepEqual([...state.conversations.keys()], ["#team"]);
    assert.deepEqual([...state.conversation("#team").unreadIds], [1, 4]);
  });
});

describe("Acks", () => {
  it("acknowledges the newest id seen, once", () => {
    const acks = new Acks();
    assert.equal(acks.next(), null);
    acks.saw(5);
    acks.saw(3);
    assert.equal(acks.next(), 5);
    assert.equal(acks.next(), null);
    acks.saw(8);
    assert.equal(acks.next(), 8);
  });

  it("acknowledges again after a failure, unless a newer one went out", () => {
    const acks = new Acks();
    acks.saw(5);
    assert.equal(acks.next(), 5);
    acks.failed(5);
    assert.equal(acks.next(), 5);
    acks.saw(9);
    assert.equal(acks.next(), 9);
    acks.failed(5);
    assert.equal(acks.next(), null);
  });

  it("starts over on a new connection", () => {
    const acks = new Acks();
    acks.saw(5);
    acks.next();
    acks.reset();
    assert.equal(acks.next(), null);
    acks.saw(2);
    assert.equal(acks.next(), 2);
  });
});

describe("Session", () => {
  it("is saved as its username and token, and restored from that", () => {
    const session = new Session("messi", "0ea56f89-4bf4-411b-9eda-0dad62a64e12");
    assert.deepEqual(JSON.parse(session.saved()), { username: "messi", token: session.token });
    const restored = Session.restore(session.saved(), rules);
    assert.equal(restored.username, "messi");
    assert.equal(restored.token, session.token);
    assert.equal(restored.chat.me, "messi");
    assert.equal(restored.active, null);
  });

  it("restores nothing from nothing, or from a damaged entry", () => {
    const bad = [
      null,
      "",
      "{",
      "42",
      "null",
      JSON.stringify({ username: "Messi", token: "t" }),
      JSON.stringify({ username: "messi" }),
      JSON.stringify({ username: ["messi"], token: "t" }),
      JSON.stringify({ username: "messi", token: 7 }),
    ];
    for (const text of bad) assert.equal(Session.restore(text, rules), null, String(text));
  });

  it("shows a message at once and queues it, in order", () => {
    const session = new Session("messi", "t");
    const now = new Date(Date.UTC(2026, 0, 1, 10));
    const first = session.queue("henderson", { msg: "hi" }, now);
    const second = session.queue("#team", { msg: "all" }, now);
    assert.deepEqual(first, {
      localId: 1,
      from: "messi",
      to: "henderson",
      group: undefined,
      msg_from: "messi",
      sent_at: "2026-01-01T10:00:00.000Z",
      status: "queued",
      msg: "hi",
    });
    assert.equal(second.localId, 2);
    assert.equal(second.group, "team");
    assert.equal(second.to, "messi");
    assert.deepEqual(session.outbox, [
      { key: "henderson", local: first },
      { key: "#team", local: second },
    ]);
    assert.deepEqual(session.chat.conversation("henderson").pending, [first]);
    assert.equal(session.chat.keyFor(second), "#team");
  });

  it("signs the user's messages with their full name once known", () => {
    const session = new Session("messi", "t");
    session.chat.setOnline([{ username: "messi", full_name: "Lionel Messi" }]);
    assert.equal(session.queue("henderson", { msg: "hi" }).msg_from, "Lionel Messi");
  });

  it("queues a failed message again, in its place", () => {
    const session = new Session("messi", "t");
    const local = session.queue("henderson", { msg: "hi" });
    session.outbox.shift();
    local.status = "failed";
    local.error = "storage unavailable";
    assert.equal(session.retry(local), true);
    assert.equal(local.status, "queued");
    assert.equal(local.error, undefined);
    assert.deepEqual(session.outbox, [{ key: "henderson", local }]);
    assert.deepEqual(session.chat.conversation("henderson").pending, [local]);
  });

  it("asks for a file again when it is no longer at hand", () => {
    const session = new Session("messi", "t");
    const withFile = session.queue("#team", { msg: "a.png", file_name: "a.png", file: {}, progress: 0.5 });
    const lost = session.queue("#team", { msg: "b.png", file_name: "b.png" });
    session.outbox.length = 0;
    assert.equal(session.retry(withFile), true);
    assert.equal(withFile.progress, 0);
    assert.equal(session.retry(lost), false);
    assert.equal(lost.status, "failed");
    assert.equal(lost.error, "pick the file again");
    assert.deepEqual(session.outbox, [{ key: "#team", local: withFile }]);
  });
});
