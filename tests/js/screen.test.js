// screen.js: what the chat screen says, from the state (its pure part;
// the drawing itself runs in Chromium, tests/test_web_browser.py).

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Rules } from "../../chat/web/static/js/rules.js";
import {
  connectionText,
  emptyText,
  groupStatus,
  historyText,
  recipientText,
} from "../../chat/web/static/js/screen.js";
import { Conversation } from "../../chat/web/static/js/state.js";
import { served } from "./served.js";

const rules = new Rules(served);

function withMessage(key) {
  const conversation = new Conversation(key);
  conversation.byId.set(1, { id: 1, from: "messi", to: key, msg: "hi", sent_at: "2026-01-01T10:00:00Z" });
  return conversation;
}

describe("emptyText", () => {
  it("asks to pick a conversation while none is open", () => {
    assert.equal(emptyText(null), "Pick a conversation, or type a username or #group in To.");
  });

  it("says loading, nothing after an error, or invites a first message", () => {
    const conversation = new Conversation("henderson");
    assert.equal(emptyText(conversation, "Jordan Henderson"), "No messages with Jordan Henderson yet. Say hello!");
    conversation.error = "no_such_user";
    assert.equal(emptyText(conversation, "henderson"), "");
    conversation.loading = true;
    assert.equal(emptyText(conversation, "henderson"), "Loading…");
  });
});

describe("historyText", () => {
  it("says nothing over an empty conversation", () => {
    const conversation = new Conversation("henderson");
    conversation.loading = true;
    assert.equal(historyText(conversation), "");
  });

  it("says earlier messages are loading, or that there are none", () => {
    const conversation = withMessage("henderson");
    assert.equal(historyText(conversation), "");
    conversation.loading = true;
    assert.equal(historyText(conversation), "Loading earlier messages…");
    conversation.loading = false;
    conversation.loaded = true;
    assert.equal(historyText(conversation), "");
    conversation.hasMore = false;
    assert.equal(historyText(conversation), "This is the beginning of the conversation.");
  });
});

describe("groupStatus", () => {
  it("offers to create a group that does not exist", () => {
    const group = new Conversation("#team");
    group.error = "no_such_group";
    assert.deepEqual(groupStatus(group), {
      text: "There is no group #team yet.",
      action: { label: "Create #team", verb: "creategroup" },
    });
  });

  it("offers to join a group the user is not in", () => {
    const group = new Conversation("#team");
    group.member = false;
    const joinable = { text: "You are not in #team.", action: { label: "Join #team", verb: "joingroup" } };
    assert.deepEqual(groupStatus(group), joinable);
    group.member = null;
    group.error = "not_a_member";
    assert.deepEqual(groupStatus(group), joinable);
  });

  it("counts a member's group's members and offers to leave", () => {
    const group = new Conversation("#team");
    group.member = true;
    group.members = ["messi"];
    assert.deepEqual(groupStatus(group), { text: "1 member", action: { label: "Leave", verb: "leavegroup" } });
    group.members = ["messi", "henderson"];
    assert.equal(groupStatus(group).text, "2 members");
  });

  it("offers nothing while membership is unknown", () => {
    const group = new Conversation("#team");
    assert.deepEqual(groupStatus(group), { text: "", action: null });
  });
});

describe("recipientText", () => {
  it("says when To is not a username or #group", () => {
    assert.equal(recipientText("", rules), "");
    assert.equal(recipientText("   ", rules), "");
    assert.equal(recipientText(" henderson ", rules), "");
    assert.equal(recipientText("#team", rules), "");
    assert.equal(recipientText("not a name", rules), "Not a valid username or #group");
  });
});

describe("connectionText", () => {
  it("names each state of the connection", () => {
    assert.deepEqual(connectionText("connected", 0, 0), { text: "Online", title: "Connected to the server" });
    assert.deepEqual(connectionText("connecting", 0, 0), { text: "Connecting…", title: "Connecting to the server" });
    assert.equal(connectionText("offline", 0, 0).text, "Offline");
  });

  it("counts down whole seconds to the next attempt, at least one", () => {
    const waiting = connectionText("waiting", 10_500, 8_000);
    assert.deepEqual(waiting, { text: "Offline · retry in 3s", title: "Not connected. Click to try again now." });
    assert.equal(connectionText("waiting", 8_000, 9_000).text, "Offline · retry in 1s");
  });
});
