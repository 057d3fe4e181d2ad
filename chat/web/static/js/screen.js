// The chat screen: draws a Session (state.js) into the page's elements,
// `ui` (main.js's map of them by role). It keeps nothing of its own: what
// it shows comes in as parameters, what the user can do there comes in as
// callbacks. What it says is worked out by the pure functions at the end
// (unit-tested on Node); view.js builds the conversation and message lists.

import { avatar, renderList, renderMessages } from "./view.js";

// Everything on the chat screen. `stick`: scroll to the newest message
// even if the view was scrolled up. True if it scrolled to the bottom.
export function renderChat(ui, session, rules, stick, { onRetry, onGroupAction }) {
  const state = session.chat;
  const active = session.active;
  const total = state.unreadTotal();
  document.title = total ? `(${total}) Chat` : "Chat";
  renderList(ui.conversations, ui.conversationsEmpty, state, active);
  renderPeople(ui.people, state);
  renderMe(ui, session);
  renderConversationInfo(ui, session, rules, onGroupAction);
  const conversation = active === null ? null : state.conversation(active);
  ui.emptyState.hidden = conversation !== null && !conversation.isEmpty();
  if (conversation === null) {
    ui.emptyText.textContent = emptyText(null);
    ui.messageList.replaceChildren();
    ui.historyStatus.textContent = "";
    return false;
  }
  const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
  renderMessages(ui.messageList, conversation, state, onRetry);
  if (conversation.isEmpty()) ui.emptyText.textContent = emptyText(conversation, state.title(active));
  ui.historyStatus.textContent = historyText(conversation);
  if (!stick && !atBottom) return false;
  ui.messages.scrollTop = ui.messages.scrollHeight;
  return true;
}

// The user's own name and avatar.
export function renderMe(ui, session) {
  const me = session.username;
  const fullName = session.chat.fullNames.get(me) || me;
  ui.meName.textContent = fullName;
  ui.meUsername.textContent = `@${me}`;
  const picture = avatar(me, fullName);
  ui.meAvatar.className = picture.className + " small";
  ui.meAvatar.textContent = picture.textContent;
}

// The choices To offers (a datalist): the people and groups the page knows.
function renderPeople(list, state) {
  const names = new Set([...state.fullNames.keys(), ...state.online.keys()]);
  names.delete(state.me);
  const options = [...names].sort().map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.label = state.fullNames.get(name) || name;
    return option;
  });
  for (const name of [...state.groups.keys()].sort()) {
    const option = document.createElement("option");
    option.value = `#${name}`;
    options.push(option);
  }
  list.replaceChildren(...options);
}

function actionButton(text, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button small";
  button.textContent = text;
  button.addEventListener("click", onClick);
  return button;
}

// The open conversation's header: who it is with and whether they are
// online, or a group's members; or what is wrong with To. A group offers
// to be created, joined or left: onGroupAction(verb, name).
export function renderConversationInfo(ui, session, rules, onGroupAction) {
  ui.convActions.replaceChildren();
  const state = session.chat;
  const active = session.active;
  if (active === null) {
    ui.convStatus.textContent = recipientText(ui.composeTo.value, rules);
    return;
  }
  const conversation = state.conversation(active);
  if (conversation.isGroup) {
    const { text, action } = groupStatus(conversation);
    ui.convStatus.textContent = text;
    if (action !== null) {
      ui.convActions.append(actionButton(action.label, () => onGroupAction(action.verb, conversation.name)));
    }
    return;
  }
  if (conversation.error === "no_such_user") {
    ui.convStatus.textContent = `There is no user named ${active}.`;
    return;
  }
  const fullName = state.fullNames.get(active);
  const online = state.online.has(active);
  ui.convStatus.replaceChildren();
  if (fullName && fullName !== active) ui.convStatus.append(fullName, " · ");
  const presence = document.createElement("span");
  presence.className = online ? "online-text" : "offline-text";
  presence.textContent = online ? "online" : "offline";
  ui.convStatus.append(presence);
}

// The connection indicator, and the send button's tooltip. While waiting
// to connect again it counts down, on an interval: it returns that
// interval (null if none), to be passed back, and cleared, next time.
export function renderConnState(ui, connection, ticker) {
  clearInterval(ticker);
  const status = connection.state;
  ui.connState.dataset.state = status;
  const shown = connectionText(status, connection.retryAt, Date.now());
  ui.connText.textContent = shown.text;
  ui.connState.title = shown.title;
  ui.composeSend.title = status === "connected" ? "Send" : "Send (when connected again)";
  if (status !== "waiting") return null;
  return setInterval(() => {
    ui.connText.textContent = connectionText(status, connection.retryAt, Date.now()).text;
  }, 500);
}

// What the screen says: pure functions of the state.

// What the message pane says while it shows no messages: `conversation`
// is the open one (null if none is), `title` its name.
export function emptyText(conversation, title) {
  if (conversation === null) return "Pick a conversation, or type a username or #group in To.";
  if (conversation.loading) return "Loading…";
  if (conversation.error) return "";
  return `No messages with ${title} yet. Say hello!`;
}

// The line above a conversation's messages: earlier ones are loading, or
// there are none.
export function historyText(conversation) {
  if (conversation.isEmpty()) return "";
  if (conversation.loading) return "Loading earlier messages…";
  if (conversation.loaded && !conversation.hasMore) return "This is the beginning of the conversation.";
  return "";
}

// What a group's header says, and what it offers: `action` is null, or
// its button's label and the verb it sends.
export function groupStatus(conversation) {
  const key = conversation.key;
  const error = conversation.error;
  if (error === "no_such_group") {
    return { text: `There is no group ${key} yet.`, action: { label: `Create ${key}`, verb: "creategroup" } };
  }
  if (conversation.member === false || error === "not_a_member") {
    return { text: `You are not in ${key}.`, action: { label: `Join ${key}`, verb: "joingroup" } };
  }
  const count = conversation.members.length;
  return {
    text: count ? `${count} member${count === 1 ? "" : "s"}` : "",
    action: conversation.member ? { label: "Leave", verb: "leavegroup" } : null,
  };
}

// What the header says about To while no conversation is open.
export function recipientText(typed, rules) {
  const text = typed.trim();
  return text && rules.conversationKey(text) === null ? "Not a valid username or #group" : "";
}

const CONNECTION = { connected: "Online", connecting: "Connecting…", offline: "Offline" };

// The connection indicator's text and tooltip for the Connection's
// `status`; while "waiting", the seconds from `now` to `retryAt` (ms).
export function connectionText(status, retryAt, now) {
  if (status === "waiting") {
    const seconds = Math.max(1, Math.ceil((retryAt - now) / 1000));
    return { text: `Offline · retry in ${seconds}s`, title: "Not connected. Click to try again now." };
  }
  return {
    text: CONNECTION[status],
    title: status === "connected" ? "Connected to the server" : "Connecting to the server",
  };
}
