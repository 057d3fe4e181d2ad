// Small pure helpers: text, sizes, dates, files, error messages. The
// rules for names are the server's, in rules.js.

// Message text as one protocol line: line breaks become spaces.
export function oneLine(text) {
  return String(text).replace(/\s*[\r\n]+\s*/g, " ").replace(/\0/g, "").trim();
}

export function humanSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${unit}`;
}

export function parseDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

export function dayKey(date) {
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

export function dayLabel(date, now = new Date()) {
  const today = dayKey(now);
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (dayKey(date) === today) return "Today";
  if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString(undefined, options);
}

export function timeLabel(date) {
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// For the conversation list: a time today, then "Yesterday", a weekday
// for this week, else a short date.
export function shortWhen(date, now = new Date()) {
  if (dayKey(date) === dayKey(now)) return timeLabel(date);
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
  if (now - date < 6 * 24 * 3600 * 1000) return date.toLocaleDateString(undefined, { weekday: "short" });
  const options = { day: "numeric", month: "short" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString(undefined, options);
}

// The name a received file is saved under: whatever the sender wrote,
// without path separators, control characters or a leading dot.
export function saveName(name) {
  const clean = String(name || "")
    .replace(/[/\\\u0000-\u001f\u007f:*?"<>|]+/g, "_")
    .replace(/^[.\s]+/, "")
    .trim()
    .slice(0, 200);
  return clean || "download";
}

const IMAGE_TYPES = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
};

export function imageType(name) {
  const dot = String(name).lastIndexOf(".");
  if (dot < 0) return null;
  return IMAGE_TYPES[name.slice(dot + 1).toLowerCase()] || null;
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// Base64 of a File, without the data: URL prefix.
export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(",") + 1));
    };
    reader.onerror = () => reject(reader.error || new Error("cannot read the file"));
    reader.readAsDataURL(file);
  });
}

export function initials(text) {
  const words = String(text || "?").replace(/^#/, "").split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : (words[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

// One of eight avatar colours, stable for a name.
export function hueClass(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${hash % 8}`;
}

const FRIENDLY = {
  unknown_user: "There is no account with that username.",
  wrong_password: "Wrong password.",
  no_session: "Your session has ended. Please log in again.",
  no_such_user: "There is no user with that name.",
  no_such_group: "That group does not exist.",
  not_a_member: "You are not a member of that group.",
  file_too_large: "That file is too large for this server.",
  invalid_file_name: "The server does not accept that file name.",
  rate_limited: "Too many attempts. Please wait a moment.",
  storage_unavailable: "The server cannot store messages right now. Try again later.",
  registration_closed: "This server does not allow creating accounts.",
  user_exists: "That username is taken.",
  group_exists: "That group already exists.",
  already_member: "You are already in that group.",
  no_such_realm: "That server is not linked to this one.",
  line_too_long: "That is too large for this server.",
  connection_lost: "The connection to the server was lost.",
};

export function friendlyError(error) {
  const code = error && error.code;
  if (code && FRIENDLY[code]) return FRIENDLY[code];
  return (error && error.message) || "Something went wrong.";
}
