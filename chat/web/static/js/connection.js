// The WebSocket to the chat server: one request line per text frame, one
// JSON reply per frame, in request order; frames with an "event" key are
// pushed events, not replies. Reconnects with backoff while `persistent`.

export class ServerError extends Error {
  constructor(reply) {
    super(reply.message || "error");
    this.reply = reply;
    this.code = reply.code || "";
  }
}

// The connection closed before the reply came. Its code says why, as a
// ServerError's does: "connection_lost", or "line_too_long" when the
// server closed it because a request was too large.
export class ConnectionLost extends Error {
  constructor(message = "the connection to the server was lost", code = "connection_lost") {
    super(message);
    this.code = code;
  }
}

const PING_EVERY_MS = 25000;
const PING_TIMEOUT_MS = 10000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

export class Connection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.pending = [];
    this.state = "offline"; // offline | connecting | connected | waiting
    this.persistent = false;
    this.attempt = 0;
    this.retryAt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.openWaiters = [];
  }

  get connected() {
    return this.state === "connected";
  }

  // Connect now if not connected; with persistent, keep reconnecting.
  start(persistent = this.persistent) {
    this.persistent = persistent;
    if (this.ws === null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.open();
    }
  }

  stop() {
    this.persistent = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ws = this.ws;
    if (ws !== null) {
      this.closed(ws, "closed");
      ws.close(1000);
    }
    this.setState("offline");
  }

  // A promise for the next open connection (or the current one).
  whenConnected(timeoutMs = 10000) {
    if (this.connected) return Promise.resolve();
    this.start();
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        this.openWaiters = this.openWaiters.filter((w) => w !== waiter);
        reject(new ConnectionLost("cannot reach the server"));
      }, timeoutMs);
      this.openWaiters.push(waiter);
    });
  }

  // Send one request line; resolves with the OK reply, rejects with a
  // ServerError (an ERROR reply) or ConnectionLost.
  request(line) {
    if (!this.connected) return Promise.reject(new ConnectionLost("not connected"));
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.ws.send(line);
    });
  }

  // Bytes of requests still waiting in the browser to be sent.
  get buffered() {
    return this.ws === null ? 0 : this.ws.bufferedAmount;
  }

  retryNow() {
    if (this.state === "waiting") {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.open();
    }
  }

  open() {
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.setState("connected");
      this.keepAlive();
      const waiters = this.openWaiters;
      this.openWaiters = [];
      for (const waiter of waiters) {
        clearTimeout(waiter.timer);
        waiter.resolve();
      }
      this.dispatchEvent(new Event("open"));
    };
    ws.onmessage = (message) => {
      if (this.ws !== ws || typeof message.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (frame !== null && typeof frame === "object" && "event" in frame) {
        this.dispatchEvent(new CustomEvent("event", { detail: frame }));
        return;
      }
      const waiter = this.pending.shift();
      if (waiter === undefined) return;
      if (frame.status === "OK") waiter.resolve(frame);
      else waiter.reject(new ServerError(frame));
    };
    ws.onclose = (event) => this.closed(ws, event.code === 1009 ? "too_big" : "lost");
    ws.onerror = () => {};
  }

  // The socket is gone (or given up on): fail what waited, maybe retry.
  closed(ws, why) {
    if (this.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.ws = null;
    clearTimeout(this.pingTimer);
    const pending = this.pending;
    this.pending = [];
    const error =
      why === "too_big"
        ? new ConnectionLost("the server refused a request that was too large", "line_too_long")
        : new ConnectionLost();
    for (const waiter of pending) waiter.reject(error);
    this.dispatchEvent(new CustomEvent("close", { detail: why }));
    if (this.persistent && why !== "closed") this.scheduleRetry();
    else this.setState("offline");
  }

  scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = base * (1 + Math.random() / 4);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("waiting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  // A ping now and then: keeps proxies from dropping a quiet connection,
  // and notices a dead one (no answer) sooner than TCP would.
  keepAlive() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      const ws = this.ws;
      if (ws === null || !this.connected) return;
      let timer;
      const giveUp = () => {
        // A large request still leaving the browser delays the answer.
        if (ws.bufferedAmount > 0) {
          timer = setTimeout(giveUp, PING_TIMEOUT_MS);
          return;
        }
        this.closed(ws, "lost");
        ws.close();
      };
      timer = setTimeout(giveUp, PING_TIMEOUT_MS);
      this.request("ping keepalive")
        .then(() => {
          clearTimeout(timer);
          this.keepAlive();
        })
        .catch(() => clearTimeout(timer));
    }, PING_EVERY_MS);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}
