// The chat page: logs in, keeps one WebSocket, shows conversations.
//
// Messages are de-duplicated by id and acknowledged (`ack`) only after
// they were rendered, so a reconnect shows nothing twice and loses nothing.
// The session token lives in sessionStorage: a reload stays logged in,
// closing the tab forgets it. It never goes into a URL or a cookie.
//
// What the page knows lives in `session` (a Session of state.js, while
// logged in) and in `page` (how the page is shown); the server's settings
// and rules for names come in the page itself. Errors are told apart by
// their code, never by their message. screen.js draws the chat screen,
// sender.js sends the user's messages; this module logs in, reads
// history, and wires the page's events to them.

import { Connection } from "./connection.js";
import * as fmt from "./format.js";
import { Rules } from "./rules.js";
import { renderChat, renderConnState, renderConversationInfo, renderMe } from "./screen.js";
import { Sender } from "./sender.js";
import { Session } from "./state.js";
import { toast } from "./view.js";

const $ = (id) => document.getElementById(id);

const SESSION = "chat.session";
const KEYS = "chat.conversations";
const OPEN = "chat.open";
const UNREAD = "chat.unread";
const PAGE = 30;

const ui = {
  login: $("login"),
  loginForm: $("login-form"),
  loginIntro: $("login-intro"),
  loginNotice: $("login-notice"),
  loginError: $("login-error"),
  username: $("login-username"),
  password: $("login-password"),
  fullName: $("register-fullname"),
  registerFields: $("register-fields"),
  registerSwitch: $("register-switch"),
  registerQuestion: $("register-question"),
  registerToggle: $("register-toggle"),
  submit: $("login-submit"),
  chat: $("chat"),
  meAvatar: $("me-avatar"),
  meName: $("me-name"),
  meUsername: $("me-username"),
  connState: $("conn-state"),
  connText: $("conn-text"),
  logout: $("logout"),
  newMessage: $("new-message"),
  conversations: $("conversations"),
  conversationsEmpty: $("conversations-empty"),
  conversation: $("conversation"),
  back: $("back"),
  composeTo: $("compose-to"),
  people: $("people"),
  convStatus: $("conv-status"),
  convActions: $("conv-actions"),
  messages: $("messages"),
  historyStatus: $("history-status"),
  messageList: $("message-list"),
  emptyState: $("empty-state"),
  emptyText: $("empty-text"),
  composer: $("composer"),
  composeText: $("compose-text"),
  composeFile: $("compose-file"),
  attach: $("attach"),
  composeSend: $("compose-send"),
  dropOverlay: $("drop-overlay"),
  toasts: $("toasts"),
};

// What the server tells the page (chat/web/site.py puts it in the page):
// max_file_size, registration, and its rules for names.
const settings = JSON.parse(document.querySelector('meta[name="chat-settings"]').content);
const rules = new Rules(settings.rules);

const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const connection = new Connection(`${scheme}//${location.host}/ws`);

// The login, while there is one.
let session = null;

// How the page is shown, logged in or not.
const page = {
  registering: false, // the login form creates an account
  renderScheduled: false,
  stickToBottom: true, // the next render scrolls to the newest message
  pinned: true, // the view is at the bottom (follow new messages)
  retryTicker: null, // counts down to the next connection attempt
  toTimer: null, // reads To once typing pauses
  reconcileTimers: new Map(), // by conversation: read own messages back
};

// Sends the session's outbox (sender.js).
const sender = new Sender(connection, request, () => session, {
  changed: scheduleRender,
  sent: reconcileSoon,
  gone: forget,
  progress: (local) => {
    const bar = ui.messageList.querySelector(`[data-local="${local.localId}"] progress`);
    if (bar) bar.value = local.progress;
  },
});

// Session storage.

function rememberedKeys() {
  try {
    const keys = JSON.parse(sessionStorage.getItem(KEYS) || "[]");
    return Array.isArray(keys) ? keys.filter((key) => rules.isConversationKey(key)) : [];
  } catch (error) {
    return [];
  }
}

function forgetStorage() {
  sessionStorage.removeItem(SESSION);
  sessionStorage.removeItem(KEYS);
  sessionStorage.removeItem(OPEN);
  sessionStorage.removeItem(UNREAD);
}

function forget(key) {
  const conversation = session.chat.conversation(key);
  conversation.listed = false;
  const keys = rememberedKeys().filter((known) => known !== key);
  sessionStorage.setItem(KEYS, JSON.stringify(keys));
}

function remember(key) {
  const conversation = session.chat.conversation(key);
  conversation.listed = true;
  const keys = rememberedKeys();
  if (!keys.includes(key)) {
    keys.push(key);
    sessionStorage.setItem(KEYS, JSON.stringify(keys.slice(-200)));
  }
}

// Requests: every one carries the token; an ended session ends the page's.

async function request(line) {
  try {
    return await connection.request(line);
  } catch (error) {
    if (error.code === "no_session") sessionEnded();
    throw error;
  }
}

function withTimeout(promise, ms) {
  return Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), ms))]);
}

// Logging in.

function showLogin(notice = "") {
  ui.chat.hidden = true;
  ui.login.hidden = false;
  ui.loginNotice.textContent = notice;
  ui.loginNotice.hidden = !notice;
  ui.loginError.textContent = "";
  ui.registerSwitch.hidden = !settings.registration;
  setRegistering(false);
  document.title = "Chat";
  ui.username.focus();
}

function setRegistering(on) {
  const registering = on && settings.registration;
  page.registering = registering;
  ui.registerFields.hidden = !registering;
  ui.fullName.required = registering;
  ui.password.autocomplete = registering ? "new-password" : "current-password";
  ui.submit.textContent = registering ? "Create account" : "Log in";
  ui.loginIntro.textContent = registering ? "Create an account on this server." : "Log in to your account.";
  ui.registerQuestion.textContent = registering ? "Have an account?" : "New here?";
  ui.registerToggle.textContent = registering ? "Log in" : "Create an account";
  ui.loginError.textContent = "";
}

function loginProblem() {
  const registering = page.registering;
  const username = ui.username.value.trim().toLowerCase();
  const password = ui.password.value;
  if (!rules.isUsername(username)) {
    ui.username.focus();
    return `Usernames are 1-${rules.maxNameLength} lowercase letters, digits, '_', '-' or '.'.`;
  }
  if (registering && !ui.fullName.value.trim()) {
    ui.fullName.focus();
    return "Please give your full name.";
  }
  if (!password) {
    ui.password.focus();
    return "Please type your password.";
  }
  if (/\s/.test(password)) return "Passwords cannot contain spaces.";
  if (registering && password.length < rules.minPasswordLength) {
    return `Passwords need at least ${rules.minPasswordLength} characters.`;
  }
  return null;
}

async function submitLogin(event) {
  event.preventDefault();
  if (ui.submit.disabled) return;
  const problem = loginProblem();
  ui.loginError.textContent = problem || "";
  if (problem) return;
  const registering = page.registering;
  const username = ui.username.value.trim().toLowerCase();
  const password = ui.password.value;
  const label = ui.submit.textContent;
  ui.submit.disabled = true;
  ui.submit.textContent = registering ? "Creating…" : "Logging in…";
  try {
    await connection.whenConnected();
    // Registering logs in: its reply carries the session token, as auth's.
    const reply = registering
      ? await connection.request(`register ${username} ${password} ${fmt.oneLine(ui.fullName.value)}`)
      : await connection.request(`auth ${username} ${password}`);
    ui.password.value = "";
    forgetStorage();
    session = new Session(username, reply.tokenid);
    sessionStorage.setItem(SESSION, session.saved());
    enterChat();
  } catch (error) {
    ui.loginError.textContent =
      error.code === "connection_lost" ? "Cannot reach the chat server. Please try again." : fmt.friendlyError(error);
  } finally {
    ui.submit.disabled = false;
    ui.submit.textContent = label;
  }
}

function enterChat() {
  for (const key of rememberedKeys()) session.chat.conversation(key).listed = true;
  try {
    session.chat.restoreUnread(JSON.parse(sessionStorage.getItem(UNREAD) || "{}"), rules);
  } catch (error) {
    // no counts to restore
  }
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.chat.dataset.view = "list";
  renderMe(ui, session);
  const open = sessionStorage.getItem(OPEN);
  if (rules.isConversationKey(open)) openConversation(open, { focus: false });
  else closeConversation();
  connection.persistent = true;
  if (connection.connected) resume();
  else connection.start(true);
  page.retryTicker = renderConnState(ui, connection, page.retryTicker);
  scheduleRender();
}

function sessionEnded(notice = "Your session has ended. Please log in again.") {
  if (session === null) return;
  const ended = session;
  session = null;
  forgetStorage();
  connection.stop();
  for (const conversation of ended.chat.conversations.values()) {
    for (const message of conversation.messages()) if (message.fileUrl) URL.revokeObjectURL(message.fileUrl);
  }
  ui.messageList.replaceChildren();
  ui.conversations.replaceChildren();
  ui.composeTo.value = "";
  ui.composeText.value = "";
  showLogin(notice);
}

async function logout() {
  if (session === null) return;
  const leaving = session;
  ui.logout.disabled = true;
  leaving.loggingOut = true;
  try {
    if (connection.connected) await withTimeout(connection.request(`logout ${leaving.token}`), 3000);
  } catch (error) {
    // logged out locally anyway; the session expires on the server
  } finally {
    ui.logout.disabled = false;
    leaving.loggingOut = false;
  }
  sessionEnded("You have logged out.");
}

// After every (re)connection: subscribe again, refresh, send what waited.

async function resume() {
  if (session === null) return;
  const current = session;
  const token = current.token;
  try {
    await request(`subscribe ${token}`);
  } catch (error) {
    return; // an ended session was handled; a lost connection retries
  }
  current.acks.reset();
  for (const conversation of current.chat.conversations.values()) conversation.loaded = false;
  try {
    current.chat.setOnline((await request(`who ${token}`)).users);
    current.chat.setGroups((await request(`groups ${token}`)).groups);
  } catch (error) {
    return;
  }
  if (session !== current) return;
  renderMe(ui, session);
  scheduleRender();
  const unsure = [...current.chat.conversations.values()].filter((c) => c.isUnsure());
  for (const conversation of unsure) await loadNewest(conversation.key);
  for (const conversation of unsure) conversation.failUnsure("the connection was lost while sending");
  if (session !== current) return;
  if (current.active !== null) await loadNewest(current.active);
  sender.flush();
  await loadPreviews();
}

async function loadPreviews() {
  if (session === null) return;
  const current = session;
  const wanted = current.chat.listed().filter((c) => c.isEmpty() && !c.previewed && (!c.isGroup || c.member));
  for (const conversation of wanted.slice(0, 30)) {
    if (session !== current || !connection.connected) return;
    conversation.previewed = true;
    try {
      const reply = await request(`history ${current.token} ${conversation.key} 1`);
      for (const message of reply.messages) current.chat.add(message);
      if (reply.messages.length && conversation.byId.size === reply.messages.length) conversation.hasMore = true;
    } catch (error) {
      // no preview for this one
    }
    scheduleRender();
  }
}

// Live events.

function onEvent(event) {
  if (session === null) return;
  const frame = event.detail;
  if (frame.event === "message") {
    const { conversation, added } = session.chat.add(frame);
    if (added && (conversation.key !== session.active || document.hidden)) conversation.unreadIds.add(frame.id);
    session.acks.saw(frame.id);
    scheduleRender();
  } else if (frame.event === "presence") {
    session.chat.presence(frame);
    scheduleRender();
  } else if (frame.event === "unsubscribed" && !session.loggingOut) {
    sessionEnded("Your session has ended. Please log in again.");
  }
}

// Acknowledge what was rendered: called right after rendering.
function acknowledge() {
  if (session === null || !connection.connected) return;
  const acks = session.acks;
  const upTo = acks.next();
  if (upTo === null) return;
  request(`ack ${session.token} ${upTo}`).catch(() => acks.failed(upTo));
}

// History.

async function loadNewest(key) {
  if (session === null) return;
  const current = session;
  const conversation = current.chat.conversation(key);
  if (conversation.loading || !connection.connected) return;
  conversation.loading = true;
  conversation.error = null;
  scheduleRender();
  try {
    const oldestBefore = conversation.oldestId();
    const reply = await request(`history ${current.token} ${key} ${PAGE}`);
    for (const message of reply.messages) current.chat.add(message);
    const oldestRead = reply.messages.length ? reply.messages[reply.messages.length - 1].id : null;
    if (oldestBefore === null || (oldestRead !== null && oldestRead <= oldestBefore)) {
      conversation.hasMore = reply.next_before_id !== null;
    }
    conversation.loaded = true;
    if (conversation.isGroup) conversation.member = true;
  } catch (error) {
    conversation.error = error.code || "connection_lost";
    if (error.code === "not_a_member") conversation.member = false;
    if ((error.code === "no_such_user" || error.code === "no_such_group") && session === current) forget(key);
  } finally {
    conversation.loading = false;
    scheduleRender();
  }
  requestAnimationFrame(fillView);
}

async function loadOlder(key) {
  if (session === null) return;
  const current = session;
  const conversation = current.chat.conversation(key);
  if (!conversation.loaded || conversation.loading || !conversation.hasMore || !connection.connected) return;
  const before = conversation.oldestId();
  if (before === null) return;
  conversation.loading = true;
  scheduleRender();
  try {
    const reply = await request(`history ${current.token} ${key} ${PAGE} ${before}`);
    const fromBottom = ui.messages.scrollHeight - ui.messages.scrollTop;
    for (const message of reply.messages) current.chat.add(message);
    conversation.hasMore = reply.next_before_id !== null;
    conversation.loading = false;
    if (key === current.active) {
      render();
      ui.messages.scrollTop = ui.messages.scrollHeight - fromBottom;
    }
  } catch (error) {
    conversation.error = error.code || "connection_lost";
  } finally {
    conversation.loading = false;
    scheduleRender();
  }
  requestAnimationFrame(fillView);
}

// Load older pages until the view can scroll (or there is nothing more).
function fillView() {
  if (session === null || session.active === null) return;
  if (ui.messages.scrollHeight <= ui.messages.clientHeight + 40) loadOlder(session.active);
}

// Reading the user's own messages back gives them their ids.
function reconcileSoon(key) {
  const timers = page.reconcileTimers;
  clearTimeout(timers.get(key));
  timers.set(
    key,
    setTimeout(async () => {
      timers.delete(key);
      if (session === null || !connection.connected) return;
      const current = session;
      try {
        const reply = await request(`history ${current.token} ${key} 20`);
        for (const message of reply.messages) current.chat.add(message);
        scheduleRender();
      } catch (error) {
        // the next history read does it
      }
    }, 600),
  );
}

// Conversations.

function openConversation(key, { focus = true, fromInput = false } = {}) {
  session.active = key;
  sessionStorage.setItem(OPEN, key);
  const conversation = session.chat.conversation(key);
  conversation.unreadIds.clear();
  if (!fromInput) ui.composeTo.value = key;
  ui.chat.dataset.view = "conversation";
  page.stickToBottom = true;
  if (!conversation.loaded) loadNewest(key);
  render();
  ui.messages.scrollTop = ui.messages.scrollHeight;
  if (focus) ui.composeText.focus();
}

function closeConversation() {
  session.active = null;
  sessionStorage.removeItem(OPEN);
  render();
}

function newMessage() {
  ui.composeTo.value = "";
  closeConversation();
  ui.chat.dataset.view = "conversation";
  ui.composeTo.focus();
}

function onToInput() {
  clearTimeout(page.toTimer);
  page.toTimer = setTimeout(() => {
    if (session === null) return;
    const key = rules.conversationKey(ui.composeTo.value);
    if (key === null) {
      if (!ui.composeTo.value.trim()) closeConversation();
      else renderConversationInfo(ui, session, rules, groupAction);
      return;
    }
    if (key !== session.active) openConversation(key, { focus: false, fromInput: true });
  }, 250);
}

function onToCommit() {
  clearTimeout(page.toTimer);
  if (session === null) return;
  const key = rules.conversationKey(ui.composeTo.value);
  if (key === null) {
    if (ui.composeTo.value.trim()) toast(ui.toasts, "Type a username, or #group for a group.", "error");
    return;
  }
  ui.composeTo.value = key;
  if (key !== session.active) openConversation(key, { focus: true });
  else ui.composeText.focus();
}

async function groupAction(verb, name) {
  if (session === null) return;
  const current = session;
  try {
    const reply = await request(`${verb} ${current.token} ${name}`);
    current.chat.setGroups((await request(`groups ${current.token}`)).groups);
    if (session !== current) return;
    const conversation = current.chat.conversation(`#${name}`);
    conversation.error = null;
    if (verb !== "leavegroup") {
      remember(`#${name}`);
      conversation.loaded = false;
      loadNewest(`#${name}`);
    } else {
      conversation.member = false;
      // The last member left: the group is gone, so it can be made again
      // but not joined.
      if (reply.group === null) conversation.error = "no_such_group";
    }
  } catch (error) {
    if (session === current && error.code === "no_such_group") {
      current.chat.conversation(`#${name}`).error = "no_such_group";
    }
    toast(ui.toasts, fmt.friendlyError(error), "error");
  }
  scheduleRender();
}

// Sending.

function currentRecipient() {
  const key = rules.conversationKey(ui.composeTo.value);
  if (key === null) {
    toast(ui.toasts, "Type a username, or #group for a group, in To.", "error");
    ui.composeTo.focus();
  }
  return key;
}

function queueLocal(key, fields) {
  if (key !== session.active) openConversation(key, { focus: false });
  remember(key);
  session.queue(key, fields);
  page.stickToBottom = true;
  scheduleRender();
  sender.flush();
}

function sendText() {
  if (session === null) return;
  const key = currentRecipient();
  if (key === null) return;
  const text = fmt.oneLine(ui.composeText.value);
  if (!text) return;
  ui.composeText.value = "";
  queueLocal(key, { msg: text });
  ui.composeText.focus();
}

function attachFiles(files) {
  if (session === null || !files.length) return;
  const key = currentRecipient();
  if (key === null) return;
  for (const file of files) {
    if (file.size === 0) {
      toast(ui.toasts, `${file.name} is empty.`, "error");
      continue;
    }
    if (file.size > settings.max_file_size) {
      toast(ui.toasts, `${file.name} is larger than ${fmt.humanSize(settings.max_file_size)}, this server's limit.`, "error");
      continue;
    }
    const name = rules.wireFileName(file.name);
    queueLocal(key, {
      msg: name,
      file_name: name,
      file_size: file.size,
      file: file,
      fileUrl: URL.createObjectURL(file),
      progress: 0,
    });
  }
}

function retry(local) {
  if (session === null) return;
  if (session.retry(local)) sender.flush();
  scheduleRender();
}

// Rendering.

function scheduleRender() {
  if (page.renderScheduled) return;
  page.renderScheduled = true;
  setTimeout(() => {
    page.renderScheduled = false;
    render();
    acknowledge();
  }, 0);
}

// Draws the chat screen (screen.js) and keeps the unread counts for a reload.
function render() {
  if (session === null) return;
  sessionStorage.setItem(UNREAD, JSON.stringify(session.chat.unreadSnapshot()));
  if (renderChat(ui, session, rules, page.stickToBottom, { onRetry: retry, onGroupAction: groupAction })) {
    page.stickToBottom = false;
    page.pinned = true;
  }
}

// Wiring.

function bind() {
  ui.loginForm.addEventListener("submit", submitLogin);
  ui.registerToggle.addEventListener("click", () => setRegistering(!page.registering));
  ui.logout.addEventListener("click", logout);
  ui.connState.addEventListener("click", () => connection.retryNow());
  ui.newMessage.addEventListener("click", newMessage);
  ui.back.addEventListener("click", () => {
    ui.chat.dataset.view = "list";
  });
  ui.conversations.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    if (button) openConversation(button.dataset.key);
  });
  ui.composeTo.addEventListener("input", onToInput);
  ui.composeTo.addEventListener("change", onToCommit);
  ui.composeTo.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      onToCommit();
    }
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendText();
  });
  ui.composeText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) {
      event.preventDefault();
      sendText();
    }
  });
  ui.composeText.addEventListener("paste", (event) => {
    const files = event.clipboardData && event.clipboardData.files;
    if (files && files.length) {
      event.preventDefault();
      attachFiles([...files]);
    }
  });
  ui.attach.addEventListener("click", () => ui.composeFile.click());
  ui.composeFile.addEventListener("change", () => {
    attachFiles([...ui.composeFile.files]);
    ui.composeFile.value = "";
  });
  ui.messages.addEventListener("scroll", () => {
    page.pinned = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    if (session !== null && session.active !== null && ui.messages.scrollTop < 120) loadOlder(session.active);
  });
  // A picture that finishes loading grows its message: stay at the bottom.
  ui.messageList.addEventListener(
    "load",
    () => {
      if (page.pinned) ui.messages.scrollTop = ui.messages.scrollHeight;
    },
    true,
  );
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  ui.conversation.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    ui.dropOverlay.hidden = false;
  });
  ui.conversation.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  ui.conversation.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.dropOverlay.hidden = true;
  });
  ui.conversation.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    ui.dropOverlay.hidden = true;
    attachFiles([...event.dataTransfer.files]);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && session !== null && session.active !== null) {
      session.chat.conversation(session.active).unreadIds.clear();
      scheduleRender();
    }
  });
  window.addEventListener("online", () => connection.retryNow());
  connection.addEventListener("state", () => {
    page.retryTicker = renderConnState(ui, connection, page.retryTicker);
    if (connection.connected) sender.flush();
  });
  connection.addEventListener("open", () => {
    if (session !== null) resume();
  });
  connection.addEventListener("close", () => {
    // Who is online is unknown until the next who.
    if (session !== null) {
      session.chat.online = new Map();
      scheduleRender();
    }
  });
  connection.addEventListener("event", onEvent);
}

function boot() {
  bind();
  ui.username.maxLength = rules.maxNameLength;
  ui.fullName.maxLength = rules.maxFullNameLength;
  session = Session.restore(sessionStorage.getItem(SESSION), rules);
  if (session !== null) enterChat();
  else showLogin();
  document.body.dataset.ready = "true";
}

boot();
