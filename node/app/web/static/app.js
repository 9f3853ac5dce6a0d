// quicnprotochat's web UI: plain JavaScript, no build step, no dependencies.
//
// Safety: every string a peer chose (names, message text) reaches the DOM through
// textContent only (see el() below); nothing here ever assigns innerHTML. The server's
// Content-Security-Policy forbids inline script besides.
"use strict";

const PAGE = 50;
const state = {
  csrf: "",
  me: null,
  convs: new Map(), // id -> conversation
  current: null,
  rows: { oldest: null, newest: 0, allLoaded: false, loading: false },
  shown: new Map(), // message id -> <li>
  invitations: new Map(),
  events: null,
  lastEventId: "",
  readTimer: null,
};

const $ = (id) => document.getElementById(id);

// An element with attributes and children; strings become text nodes, never markup.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

async function api(path, body) {
  const options = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = state.csrf;
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = {};
  try {
    data = await response.json();
  } catch (_) {
    data = { error: `the node answered ${response.status}` };
  }
  if (!response.ok) throw new Error(data.error || `the node answered ${response.status}`);
  return data;
}

function banner(text, kind = "error") {
  const box = $("banner");
  box.replaceChildren(el("span", {}, text), el("button", { class: "icon", title: "Dismiss", onclick: () => (box.hidden = true) }, "×"));
  box.className = kind;
  box.hidden = false;
}

async function attempt(work) {
  try {
    return await work();
  } catch (error) {
    banner(`ERROR: ${error.message}`);
    return undefined;
  }
}

// --- start and reload ---------------------------------------------------------------------

async function loadState() {
  const data = await api("/api/state");
  state.csrf = data.csrf;
  state.me = data.me;
  $("me-name").textContent = data.me.name;
  $("me-fp").textContent = data.me.fingerprint;
  state.convs = new Map(data.conversations.map((c) => [c.id, c]));
  state.invitations = new Map(data.invitations.map((i) => [i.id, i]));
  showRelay(data.relay);
  renderConversations();
  renderInvitations();
  return data;
}

async function start() {
  const data = await attempt(loadState);
  if (!data) return;
  const remembered = sessionStorage.getItem("conversation");
  const ids = [...state.convs.keys()];
  const first = state.convs.has(remembered) ? remembered : ids[ids.length - 1];
  if (first) await openConversation(first);
  state.lastEventId = `${data.events.boot}-${data.events.last}`;
  listen();
}

// After a reset (the page fell behind, or the node restarted): reload what is shown.
async function reloadAll() {
  await attempt(loadState);
  const id = state.current && state.convs.has(state.current) ? state.current : [...state.convs.keys()].pop();
  if (id) await openConversation(id);
}

function listen() {
  // EventSource reconnects by itself and then sends Last-Event-ID: the server replays what
  // this page missed, or says "reset". A stream that was refused (closed for good) is
  // opened again from the last event seen, by reconnect().
  const source = new EventSource(`/api/events?after=${encodeURIComponent(state.lastEventId)}`);
  state.events = source;
  source.onmessage = (message) => {
    if (message.lastEventId) state.lastEventId = message.lastEventId;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (_) {
      return;
    }
    handleEvent(event);
  };
  source.onopen = () => document.body.classList.remove("offline");
  source.onerror = () => {
    document.body.classList.add("offline");
    if (source.readyState === EventSource.CLOSED) setTimeout(reconnect, 2000);
  };
}

function reconnect() {
  if (state.events) state.events.close();
  document.body.classList.add("offline");
  listen();
}

// --- conversations ------------------------------------------------------------------------

function kindLabel(conv) {
  return conv.kind === "dm" ? "DM" : conv.kind === "group" ? "group" : "notes";
}

function renderConversations() {
  const list = $("conversations");
  const items = [];
  for (const conv of state.convs.values()) {
    const current = conv.id === state.current;
    const unread = conv.unread > 0 && !current ? el("span", { class: "unread", title: `${conv.unread} unread` }, String(conv.unread)) : null;
    items.push(
      el(
        "li",
        {},
        el(
          "button",
          { class: current ? "conv current" : "conv", "aria-current": current ? "true" : false, "data-conv": conv.id, onclick: () => openConversation(conv.id) },
          el("span", { class: "conv-title" }, conv.title),
          el("span", { class: "kind" }, kindLabel(conv)),
          unread,
        ),
      ),
    );
  }
  list.replaceChildren(...items);
}

function upsertConversation(conv) {
  if (!conv.active) {
    state.convs.delete(conv.id);
    if (state.current === conv.id) {
      const ids = [...state.convs.keys()];
      openConversation(ids[0]);
    }
  } else {
    const known = state.convs.get(conv.id);
    state.convs.set(conv.id, { ...conv, unread: known ? known.unread : conv.unread });
    if (state.current === conv.id) $("title").textContent = conv.title;
  }
  renderConversations();
}

async function openConversation(id) {
  const conv = state.convs.get(id);
  if (!conv) return;
  state.current = id;
  sessionStorage.setItem("conversation", id);
  if ($("banner").className === "info") $("banner").hidden = true;
  document.body.classList.remove("nav-open");
  $("menu").setAttribute("aria-expanded", "false");
  $("title").textContent = conv.title;
  $("members-btn").hidden = conv.kind === "notepad";
  state.rows = { oldest: null, newest: 0, allLoaded: false, loading: false };
  state.shown = new Map();
  $("messages").replaceChildren();
  conv.unread = 0;
  renderConversations();
  await loadOlder(true);
  markRead();
}

async function loadOlder(first = false) {
  const rows = state.rows;
  if (rows.loading || rows.allLoaded) return;
  rows.loading = true;
  const id = state.current;
  const before = rows.oldest === null ? "" : `&before=${rows.oldest}`;
  $("older").hidden = first;
  const data = await attempt(() => api(`/api/conversations/${id}/messages?limit=${PAGE}${before}`));
  $("older").hidden = true;
  rows.loading = false;
  if (!data || id !== state.current) return;
  if (data.messages.length < PAGE) rows.allLoaded = true;
  const scroller = $("scroller");
  const height = scroller.scrollHeight;
  const fresh = data.messages.filter((m) => !state.shown.has(m.id));
  const nodes = fresh.map(messageNode);
  $("messages").prepend(...nodes);
  for (const m of data.messages) {
    if (rows.oldest === null || m.row < rows.oldest) rows.oldest = m.row;
    if (m.row > rows.newest) rows.newest = m.row;
  }
  if (first) {
    scroller.scrollTop = scroller.scrollHeight;
    document.body.dataset.loaded = id;
  } else {
    scroller.scrollTop += scroller.scrollHeight - height; // keep what was on screen in place
  }
  // A short first page that does not fill the view: keep going until it scrolls.
  if (!rows.allLoaded && scroller.scrollHeight <= scroller.clientHeight) loadOlder();
}

function markRead() {
  clearTimeout(state.readTimer);
  const id = state.current;
  state.readTimer = setTimeout(() => {
    if (id && document.visibilityState === "visible") attempt(() => api(`/api/conversations/${id}/read`, {}));
  }, 300);
}

// --- messages -----------------------------------------------------------------------------

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

const STATE_TEXT = { queued: "queued", direct: "delivered", relay: "at the relay", failed: "failed" };

function deliveryNode(message) {
  if (message.direction !== "out" || message.deliveries.length === 0) return null;
  const parts = message.deliveries.map((d) => {
    const why = d.reason && d.state !== "direct" && d.state !== "relay" ? ` (${d.reason})` : "";
    return el("span", { class: `delivery ${d.state}`, "data-recipient": d.recipient }, `${d.name}: ${STATE_TEXT[d.state] || d.state}${why}`);
  });
  return el("div", { class: "deliveries" }, ...parts);
}

function messageNode(message) {
  const out = message.direction === "out";
  const node = el(
    "li",
    { class: out ? "msg out" : "msg in", "data-id": message.id },
    el("div", { class: "meta" }, el("span", { class: "sender" }, out ? "you" : message.sender_name), " ", el("time", {}, time(message.time_ms)), message.path === "relay" ? el("span", { class: "via" }, " via relay") : null),
    el("div", { class: "text" }, message.text),
    deliveryNode(message),
  );
  node.message = message;
  state.shown.set(message.id, node);
  return node;
}

function appendMessage(message) {
  const known = state.shown.get(message.id);
  if (known) {
    known.replaceWith(messageNode(message));
    return;
  }
  const scroller = $("scroller");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  $("messages").append(messageNode(message));
  if (message.row > state.rows.newest) state.rows.newest = message.row;
  if (atBottom || message.direction === "out") scroller.scrollTop = scroller.scrollHeight;
}

function notice(text) {
  $("messages").append(el("li", { class: "notice" }, text));
  $("scroller").scrollTop = $("scroller").scrollHeight;
}

function updateDelivery(event) {
  const node = state.shown.get(event.message_id);
  if (!node) return;
  const message = node.message;
  const deliveries = message.deliveries.filter((d) => d.recipient !== event.recipient);
  deliveries.push({ recipient: event.recipient, name: event.name, state: event.state, reason: event.reason });
  appendMessage({ ...message, deliveries });
}

async function send(event) {
  event.preventDefault();
  const box = $("text");
  const text = box.value;
  if (!text.trim() || !state.current) return;
  box.value = "";
  const data = await attempt(() => api(`/api/conversations/${state.current}/messages`, { text }));
  if (!data) box.value = text; // not sent: keep it for another try
  else appendMessage(data.message);
  box.focus();
}

// --- events -------------------------------------------------------------------------------

function handleEvent(event) {
  switch (event.type) {
    case "message": {
      const conv = state.convs.get(event.conversation);
      if (!conv) {
        attempt(loadState);
      } else if (event.conversation === state.current) {
        appendMessage(event.message);
        if (event.message.direction === "in") markRead();
      } else if (event.message.direction === "in") {
        conv.unread += 1;
        renderConversations();
      }
      break;
    }
    case "delivery":
      if (event.conversation === state.current) updateDelivery(event);
      break;
    case "conversation":
      upsertConversation(event.conversation);
      break;
    case "joined":
      upsertConversation(event.conversation);
      banner(`${event.inviter_name} invited you to ${event.conversation.kind === "dm" ? "a direct conversation" : event.conversation.title}`, "info");
      break;
    case "members":
      if (event.conversation === state.current) {
        for (const name of event.added) notice(`${name} joined`);
        for (const name of event.removed) notice(`${name} left`);
      }
      break;
    case "invitation":
      state.invitations.set(event.invitation.id, event.invitation);
      renderInvitations();
      break;
    case "relay":
      showRelay(event.state);
      break;
    case "warning":
      banner(event.text, "warn");
      break;
    case "reset":
      reloadAll();
      break;
  }
}

const RELAY_TEXT = {
  none: "no relay",
  connecting: "relay: connecting…",
  reachable: "relay connected",
  unreachable: "relay unreachable",
};

function showRelay(relay) {
  const pill = $("relay");
  pill.textContent = RELAY_TEXT[relay] || relay;
  pill.className = `pill ${relay}`;
}

// --- invitations from strangers -----------------------------------------------------------

function renderInvitations() {
  const box = $("invitations");
  const items = [...state.invitations.values()].map((inv) =>
    el(
      "div",
      { class: "invitation" },
      el("p", {}, `${inv.inviter_name} (${inv.fingerprint}) invites you to a group of ${inv.members}`),
      el("button", { onclick: () => answer(inv.id, "accept") }, "Accept"),
      " ",
      el("button", { onclick: () => answer(inv.id, "refuse") }, "Refuse"),
    ),
  );
  box.replaceChildren(...(items.length ? [el("h2", {}, "Invitations"), ...items] : []));
  box.hidden = items.length === 0;
}

async function answer(id, what) {
  const data = await attempt(() => api(`/api/invitations/${id}/${what}`, {}));
  if (!data) return;
  state.invitations.delete(id);
  renderInvitations();
  if (data.conversation) {
    upsertConversation(data.conversation);
    await openConversation(data.conversation.id);
  }
}

// --- dialogs ------------------------------------------------------------------------------

function openDialog(title, ...content) {
  const dialog = $("dialog");
  $("dialog-body").replaceChildren(
    el("div", { class: "dialog-head" }, el("h2", { id: "dialog-title" }, title), el("button", { class: "icon", title: "Close", onclick: () => dialog.close() }, "×")),
    ...content,
  );
  if (!dialog.open) dialog.showModal();
  const first = dialog.querySelector("input, textarea, button:not(.icon)");
  if (first) first.focus();
}

function askDialog(title, label, placeholder, action) {
  const input = el("input", { id: "ask", type: "text", placeholder, maxlength: "4096", required: true });
  const form = el(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const done = await attempt(() => action(input.value.trim()));
        if (done !== undefined) $("dialog").close();
      },
    },
    el("label", { for: "ask" }, label),
    input,
    el("button", { type: "submit" }, "OK"),
  );
  openDialog(title, form);
}

function newDm() {
  askDialog("New direct conversation", "Their name, key or qpc:// link", "qpc://… or a contact's name", async (person) => {
    const data = await api("/api/dm", { person });
    upsertConversation(data.conversation);
    await openConversation(data.conversation.id);
    return true;
  });
}

function newGroup() {
  askDialog("New group", "The group's name", "e.g. Book club", async (name) => {
    const data = await api("/api/groups", { name });
    upsertConversation(data.conversation);
    await openConversation(data.conversation.id);
    return true;
  });
}

function inviteMe() {
  const link = el("textarea", { readonly: true, rows: "4", class: "link", "aria-label": "Invite link" }, state.me.link);
  openDialog(
    "Your invite link",
    el("p", {}, "Give this link (or let them scan the code) to someone who should be able to reach you."),
    link,
    el("button", { onclick: () => navigator.clipboard && navigator.clipboard.writeText(state.me.link) }, "Copy"),
    el("img", { class: "qr", src: "/api/qr/me.svg", alt: "QR code of your invite link" }),
    el("p", { class: "fp" }, `fingerprint ${state.me.fingerprint}`),
  );
}

function memberRows(id, conv, data) {
  return data.members.map((m) => {
    const marks = [m.me ? "you" : null, m.committer ? "committer" : null, m.verified ? "verified" : null].filter(Boolean);
    return el(
      "li",
      {},
      el("span", { class: "member-name" }, m.name),
      marks.length ? el("span", { class: "marks" }, ` [${marks.join(", ")}]`) : null,
      el("div", { class: "fp" }, m.fingerprint),
      m.me ? null : el("button", { onclick: () => verify(m.key) }, "Verify"),
      m.me || conv.kind !== "group" ? null : el("button", { class: "danger", onclick: () => remove(id, m.key, m.name) }, "Remove"),
    );
  });
}

// After an invitation, only the list is redrawn: the form keeps the focus and whatever was typed
// meanwhile (redrawing the dialog moved the focus to the first Verify button, so a next Enter
// opened a safety number, or invited nobody).
async function refreshMembers(id, list) {
  const data = await attempt(() => api(`/api/conversations/${id}/members`));
  if (!data || !list.isConnected) return;
  list.replaceChildren(...memberRows(id, state.convs.get(id), data));
}

async function members() {
  const id = state.current;
  const data = await attempt(() => api(`/api/conversations/${id}/members`));
  if (!data) return;
  const conv = state.convs.get(id);
  const list = el("ul", { class: "members" }, ...memberRows(id, conv, data));
  const invite = el("input", { id: "invite-person", type: "text", placeholder: "name, key or qpc:// link", maxlength: "4096" });
  const inviteForm =
    conv.kind === "group"
      ? el(
          "form",
          {
            onsubmit: async (event) => {
              event.preventDefault();
              const person = invite.value.trim();
              const result = await attempt(() => api(`/api/conversations/${id}/invite`, { person }));
              if (result) {
                for (const miss of result.not_reached) banner(`${miss.name} not reached yet (${miss.why}): the invitation will be retried`, "warn");
                if (invite.value.trim() === person) invite.value = "";
                await refreshMembers(id, list);
              }
            },
          },
          el("label", { for: "invite-person" }, "Invite someone"),
          invite,
          el("button", { type: "submit" }, "Invite"),
        )
      : null;
  openDialog(
    `Members of ${conv.title}`,
    el("p", { class: "fp" }, `ciphersuite ${data.ciphersuite}`),
    list,
    inviteForm,
    el("button", { class: "danger", onclick: () => leave(id) }, "Leave this conversation"),
  );
}

async function remove(id, key, name) {
  if (!confirm(`Remove ${name} from the group?`)) return;
  if (await attempt(() => api(`/api/conversations/${id}/remove`, { key }))) members();
}

async function leave(id) {
  if (!confirm("Leave this conversation?")) return;
  if (await attempt(() => api(`/api/conversations/${id}/leave`, {}))) $("dialog").close();
}

async function verify(key) {
  const data = await attempt(() => api(`/api/contacts/${key}/verify`));
  if (!data) return;
  const c = data.contact;
  openDialog(
    `Verify ${c.name}`,
    el("p", {}, `Safety number of you and ${c.name} (${c.fingerprint}):`),
    el("pre", { class: "safety" }, data.safety_number),
    el("img", { class: "qr", src: `/api/qr/safety/${key}.svg`, alt: "QR code of the safety number" }),
    el("p", {}, "Compare it with the one their side shows (or scan its code). The same number means each of you holds the other's real key."),
    c.verified
      ? el("p", { class: "ok" }, "Marked verified.")
      : el("button", { onclick: async () => (await attempt(() => api(`/api/contacts/${key}/verify`, {}))) && verify(key) }, "They match: mark verified"),
  );
}

async function peers() {
  const data = await attempt(() => api("/api/peers"));
  if (!data) return;
  const seen = data.seen.map((p) => el("li", {}, el("span", { class: "member-name" }, p.name), ` ${p.source}, ${p.status}, ${p.address}`, el("div", { class: "fp" }, p.fingerprint)));
  const contacts = data.contacts.map((c) =>
    el("li", {}, el("span", { class: "member-name" }, c.name), c.verified ? el("span", { class: "marks" }, " [verified]") : null, el("div", { class: "fp" }, c.fingerprint), el("button", { onclick: () => verify(c.key) }, "Verify")),
  );
  openDialog(
    "Peers",
    el("p", {}, RELAY_TEXT[data.relay] || data.relay),
    el("h3", {}, "Seen on the LAN or in the DHT"),
    seen.length ? el("ul", { class: "members" }, ...seen) : el("p", {}, "none yet"),
    el("h3", {}, "Contacts"),
    contacts.length ? el("ul", { class: "members" }, ...contacts) : el("p", {}, "none yet"),
  );
}

// --- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", send);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("scroller").addEventListener("scroll", () => {
    if ($("scroller").scrollTop < 200) loadOlder();
  });
  $("menu").addEventListener("click", () => {
    const open = document.body.classList.toggle("nav-open");
    $("menu").setAttribute("aria-expanded", String(open));
  });
  $("new-dm").addEventListener("click", newDm);
  $("new-group").addEventListener("click", newGroup);
  $("invite-me").addEventListener("click", inviteMe);
  $("peers-btn").addEventListener("click", peers);
  $("members-btn").addEventListener("click", members);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && markRead());
  // Alt+Up / Alt+Down: the previous or next conversation, from anywhere.
  document.addEventListener("keydown", (event) => {
    if (!event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
    const ids = [...state.convs.keys()];
    const at = ids.indexOf(state.current) + (event.key === "ArrowUp" ? -1 : 1);
    if (at >= 0 && at < ids.length) {
      event.preventDefault();
      openConversation(ids[at]);
    }
  });
  start();
});
