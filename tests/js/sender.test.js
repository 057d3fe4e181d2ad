// sender.js: the user's messages go out one at a time, in order, and each
// ends sent, failed with a reason, or unknown after a lost connection.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { ConnectionLost, ServerError } from "../../chat/web/static/js/connection.js";
import { Sender, failureReason } from "../../chat/web/static/js/sender.js";
import { Session } from "../../chat/web/static/js/state.js";

// A Sender for `session` whose requests `answer(line)` answers (a value,
// or an error to throw); what it asks and tells is recorded.
function sending(session, answer = () => ({})) {
  const told = [];
  const lines = [];
  const connection = { connected: true, buffered: 0 };
  const current = { session };
  const request = async (line) => {
    lines.push(line);
    const reply = answer(line);
    if (reply instanceof Error) throw reply;
    return reply;
  };
  const sender = new Sender(connection, request, () => current.session, {
    changed: () => told.push("changed"),
    sent: (key) => told.push(`sent ${key}`),
    gone: (key) => told.push(`gone ${key}`),
    progress: () => told.push("progress"),
  });
  return { sender, connection, current, told, lines };
}

describe("Sender", () => {
  it("sends the outbox in order, to users and groups, and empties it", async () => {
    const session = new Session("messi", "T1");
    const first = session.queue("henderson", { msg: "hello there" });
    const second = session.queue("#team", { msg: "hi all" });
    const { sender, told, lines } = sending(session);
    await sender.flush();
    assert.deepEqual(lines, ["send T1 henderson hello there", "sendgroup T1 #team hi all"]);
    assert.equal(first.status, "sent");
    assert.equal(second.status, "sent");
    assert.deepEqual(session.outbox, []);
    assert.equal(session.flushing, false);
    assert.deepEqual(told, ["changed", "sent henderson", "changed", "changed", "sent #team", "changed"]);
  });

  it("marks a refused message failed, with the reason, and goes on", async () => {
    const session = new Session("messi", "T1");
    const refused = session.queue("nobody", { msg: "a" });
    const next = session.queue("henderson", { msg: "b" });
    const answer = (line) => (line.includes("nobody") ? new ServerError({ code: "no_such_user", message: "x" }) : {});
    const { sender, told } = sending(session, answer);
    await sender.flush();
    assert.equal(refused.status, "failed");
    assert.equal(refused.error, "There is no user with that name");
    assert.equal(next.status, "sent");
    assert.ok(told.includes("gone nobody"));
    assert.deepEqual(session.outbox, []);
  });

  it("stops at a lost connection, the message unknown and the rest waiting", async () => {
    const session = new Session("messi", "T1");
    const lost = session.queue("henderson", { msg: "a" });
    const waiting = session.queue("henderson", { msg: "b" });
    const { sender, lines } = sending(session, () => new ConnectionLost());
    await sender.flush();
    assert.equal(lost.status, "unknown");
    assert.equal(waiting.status, "queued");
    assert.deepEqual(session.outbox.map((entry) => entry.local), [waiting]);
    assert.equal(lines.length, 1);
    assert.equal(session.flushing, false);
  });

  it("sends nothing while offline, or once the session ended", async () => {
    const session = new Session("messi", "T1");
    session.queue("henderson", { msg: "a" });
    const offline = sending(session);
    offline.connection.connected = false;
    await offline.sender.flush();
    assert.deepEqual(offline.lines, []);
    assert.equal(session.outbox.length, 1);

    const ended = sending(session);
    ended.current.session = null;
    await ended.sender.flush();
    assert.deepEqual(ended.lines, []);
  });

  it("stops when the session ends while sending, and tells no one it is gone", async () => {
    const session = new Session("messi", "T1");
    const first = session.queue("nobody", { msg: "a" });
    session.queue("henderson", { msg: "b" });
    let run = null;
    run = sending(session, () => {
      run.current.session = null;
      return new ServerError({ code: "no_such_user" });
    });
    await run.sender.flush();
    assert.equal(first.status, "failed");
    assert.equal(run.lines.length, 1);
    assert.ok(!run.told.includes("gone nobody"));
    assert.equal(session.outbox.length, 1);
  });

  it("sends once at a time: a second flush while one runs does nothing", async () => {
    const session = new Session("messi", "T1");
    session.queue("henderson", { msg: "a" });
    let release = null;
    const { sender, lines } = sending(session);
    sender.request = (line) => {
      lines.push(line);
      return new Promise((resolve) => {
        release = resolve;
      });
    };
    const flushing = sender.flush();
    await sender.flush();
    assert.equal(lines.length, 1);
    release({});
    await flushing;
    assert.deepEqual(session.outbox, []);
  });
});

describe("failureReason", () => {
  it("says what the server refused, without the final stop", () => {
    assert.equal(failureReason(new ServerError({ code: "not_a_member" })), "You are not a member of that group");
    assert.equal(failureReason(new ServerError({ code: "", message: "odd." })), "odd");
  });

  it("says a line too long is too large for this server", () => {
    assert.equal(failureReason(new ConnectionLost("closed", "line_too_long")), "too large for this server");
  });
});
