// connection.js over a stand-in WebSocket: replies in order, events
// apart, and every failure carries a code.

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, it } from "node:test";

import { Connection, ConnectionLost, ServerError } from "../../chat/web/static/js/connection.js";

// The browser's WebSocket, as far as Connection uses it; the test plays
// the server.
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.bufferedAmount = 0;
    FakeSocket.opened.push(this);
  }

  send(line) {
    this.sent.push(line);
  }

  close(code) {
    this.closedWith = code;
  }

  accept() {
    this.onopen();
  }

  frame(object) {
    this.onmessage({ data: JSON.stringify(object) });
  }

  lose(code) {
    this.onclose({ code });
  }
}

// A browser has CustomEvent; Node.js 18 has it only behind a flag.
globalThis.CustomEvent ??= class CustomEvent extends Event {
  constructor(type, options = {}) {
    super(type, options);
    this.detail = options.detail ?? null;
  }
};

let connection;

beforeEach(() => {
  FakeSocket.opened = [];
  globalThis.WebSocket = FakeSocket;
  connection = new Connection("ws://127.0.0.1:8080/ws");
});

afterEach(() => {
  connection.stop();
  delete globalThis.WebSocket;
});

async function connected() {
  const ready = connection.whenConnected();
  FakeSocket.opened.at(-1).accept();
  await ready;
  return FakeSocket.opened.at(-1);
}

describe("Connection", () => {
  it("answers requests with their replies, in order", async () => {
    const socket = await connected();
    assert.equal(socket.url, "ws://127.0.0.1:8080/ws");
    const first = connection.request("auth messi surabaya");
    const second = connection.request("ping x");
    assert.deepEqual(socket.sent, ["auth messi surabaya", "ping x"]);
    socket.frame({ status: "OK", tokenid: "t" });
    socket.frame({ status: "OK", message: "PONG" });
    assert.deepEqual(await first, { status: "OK", tokenid: "t" });
    assert.equal((await second).message, "PONG");
  });

  it("hands events out apart from the replies", async () => {
    const socket = await connected();
    const events = [];
    connection.addEventListener("event", (event) => events.push(event.detail));
    const reply = connection.request("who t");
    socket.frame({ event: "presence", user: "henderson", online: true });
    socket.frame({ status: "OK", users: [] });
    assert.deepEqual(await reply, { status: "OK", users: [] });
    assert.deepEqual(events, [{ event: "presence", user: "henderson", online: true }]);
  });

  it("fails a request answered ERROR with the reply's code", async () => {
    const socket = await connected();
    const reply = connection.request("send t nobody hi");
    socket.frame({ status: "ERROR", message: "User Tidak Ditemukan", code: "no_such_user" });
    await assert.rejects(reply, (error) => {
      assert.ok(error instanceof ServerError);
      assert.equal(error.code, "no_such_user");
      assert.equal(error.reply.message, "User Tidak Ditemukan");
      return true;
    });
  });

  it("fails what waited when the connection is lost", async () => {
    const socket = await connected();
    const reply = connection.request("inbox t");
    socket.lose(1006);
    await assert.rejects(reply, (error) => error instanceof ConnectionLost && error.code === "connection_lost");
    assert.equal(connection.state, "offline");
  });

  it("says a request was too large when the server closes for that", async () => {
    const socket = await connected();
    const reply = connection.request("sendfile t henderson big.bin QUJD");
    socket.lose(1009);
    await assert.rejects(reply, (error) => error instanceof ConnectionLost && error.code === "line_too_long");
  });

  it("refuses a request while not connected", async () => {
    await assert.rejects(connection.request("ping x"), (error) => error.code === "connection_lost");
  });

  it("waits to reconnect while persistent", async () => {
    connection.persistent = true;
    const socket = await connected();
    socket.lose(1006);
    assert.equal(connection.state, "waiting");
    assert.ok(connection.retryAt > Date.now());
    connection.retryNow();
    assert.equal(connection.state, "connecting");
    assert.equal(FakeSocket.opened.length, 2);
  });
});
