// Sending the user's messages: the logged-in Session's outbox (state.js),
// one message at a time and in order, while connected. A message goes
// "sending", then "sent" (it takes its id when a history read shows it),
// or "failed" with the server's reason (Retry queues it again), or
// "unknown" when the connection was lost while sending: the next history
// read tells whether it arrived.

import { fileToBase64, friendlyError } from "./format.js";

export class Sender {
  // `request(line)` asks the server over `connection`; `session()` is the
  // page's Session, or null. What happens is told to `on`: changed() (a
  // message's status changed), sent(key), gone(key) (no such user or
  // group), progress(local) (a file's upload moved on: local.progress).
  constructor(connection, request, session, on) {
    this.connection = connection;
    this.request = request;
    this.session = session;
    this.on = on;
  }

  // Sends what waits, unless that is under way; stops at a lost
  // connection, or when the session ends.
  async flush() {
    const current = this.session();
    if (current === null || current.flushing) return;
    const outbox = current.outbox;
    current.flushing = true;
    try {
      while (outbox.length && this.connection.connected && this.session() === current) {
        const { key, local } = outbox[0];
        local.status = "sending";
        this.on.changed();
        try {
          await this.deliver(current.token, key, local);
          local.status = "sent";
          delete local.progress;
          delete local.file;
          this.on.sent(key);
        } catch (error) {
          if (error.code === "connection_lost") {
            // It may or may not have arrived: the next history read tells.
            local.status = "unknown";
            outbox.shift();
            break;
          }
          local.status = "failed";
          local.error = failureReason(error);
          if ((error.code === "no_such_user" || error.code === "no_such_group") && this.session() === current) {
            this.on.gone(key);
          }
        }
        outbox.shift();
        this.on.changed();
      }
    } finally {
      current.flushing = false;
    }
  }

  async deliver(token, key, local) {
    const group = key.startsWith("#");
    if (!local.file_name) {
      await this.request(`${group ? "sendgroup" : "send"} ${token} ${key} ${local.msg}`);
      return;
    }
    const content = await fileToBase64(local.file);
    const line = `${group ? "sendgroupfile" : "sendfile"} ${token} ${key} ${local.file_name} ${content}`;
    const total = line.length;
    const reply = this.request(line);
    const ticker = setInterval(() => {
      local.progress = Math.max(0, Math.min(1, 1 - this.connection.buffered / total));
      this.on.progress(local);
    }, 100);
    try {
      await reply;
    } finally {
      clearInterval(ticker);
    }
  }
}

// Why a message was not sent, as its "Not sent: …" line says it.
export function failureReason(error) {
  return error.code === "line_too_long" ? "too large for this server" : friendlyError(error).replace(/\.$/, "");
}
