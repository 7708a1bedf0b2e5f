// botkit sandbox chat: plain JavaScript, no build step.
// Every text goes into the page with textContent, never innerHTML: no HTML injection.
"use strict";

const TICKS = { 5: "🕓", 0: "✓", 1: "✓✓", 2: "✗ error", 3: "✗ rejected", 4: "✗ undelivered", 20: "?" };

const messages = document.getElementById("messages");
const phoneInput = document.getElementById("phone");
const textInput = document.getElementById("text");
const connection = document.getElementById("connection");
const human = document.getElementById("human");
const agentText = document.getElementById("agent-text");
let stateTimer = null;
let phone = null;
let source = null;
let seen = new Set();

function randomPhone() {
  return "38050" + String(Math.floor(Math.random() * 1e7)).padStart(7, "0");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(at) {
  const when = new Date(at * 1000);
  return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

function showUser(event) {
  const bubble = el("div", "bubble user");
  bubble.appendChild(el("p", "text", event.text));
  const meta = el("span", "meta");
  // A message that reached the bot another way (curl, a script) is shown all the same.
  if (event.via === "callback") meta.appendChild(el("span", "via", "posted to the callback"));
  meta.appendChild(el("span", "time", clock(event.at)));
  bubble.appendChild(meta);
  messages.appendChild(bubble);
}

function scrollDown() {
  messages.scrollTop = messages.scrollHeight;
}

function showBot(event) {
  const bubble = el("div", "bubble bot");
  bubble.dataset.id = String(event.id);
  bubble.dataset.type = String(event.type);
  bubble.appendChild(el("p", "text", event.text));
  if (event.image) {
    const img = el("img", "image");
    img.src = event.image;
    img.alt = "image from the bot";
    img.addEventListener("load", scrollDown);
    bubble.appendChild(img);
  }
  if (event.button) {
    const link = el("a", "button", event.button.caption);
    link.href = event.button.url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    bubble.appendChild(link);
  }
  const meta = el("span", "meta");
  meta.appendChild(el("span", "type", String(event.type)));
  meta.appendChild(el("span", "time", clock(event.at)));
  const ticks = el("span", "ticks", TICKS[event.status] || "");
  ticks.dataset.status = String(event.status);
  meta.appendChild(ticks);
  bubble.appendChild(meta);
  messages.appendChild(bubble);
}

function showStatus(event) {
  const bubble = messages.querySelector(`.bubble.bot[data-id="${Number(event.id)}"]`);
  if (!bubble) return;
  const ticks = bubble.querySelector(".ticks");
  ticks.textContent = TICKS[event.status] || "";
  ticks.dataset.status = String(event.status);
}

function handle(event) {
  // History is replayed when the stream reconnects; a restarted server numbers anew.
  const key = `${event.epoch}:${event.seq}`;
  if (seen.has(key)) return;
  seen.add(key);
  if (event.kind === "bot") { showBot(event); refreshStateSoon(); }
  else if (event.kind === "status") showStatus(event);
  else if (event.kind === "user") showUser(event);
  else if (event.kind === "error") messages.appendChild(el("div", "notice", event.error));
  scrollDown();
}

// The phone as the server reads it, and its conversation; null when the server is away.
async function fetchState(asked) {
  return fetch(`/sandbox/chat/state?phone=${encodeURIComponent(asked)}`).catch(() => null);
}

// With a person: the bot is silent, so the page says so and offers to act as the agent.
function showState(answer) {
  const conversation = answer.conversation;
  human.hidden = !(conversation && conversation.status === "human");
}

async function refreshState() {
  const response = await fetchState(phone);
  if (response && response.ok) showState(await response.json());
}

function refreshStateSoon() {
  clearTimeout(stateTimer);
  stateTimer = setTimeout(refreshState, 100);
}

// Open the chat of a phone as typed ("+38 050 124 0002"): the server reads it, or says why not.
async function open(asked) {
  const response = await fetchState(asked);
  if (response && response.status === 400) {
    const answer = await response.json().catch(() => ({}));
    notice(answer.error || `${asked} is not a phone number`);
    phoneInput.value = asked;
    return;
  }
  const answer = response && response.ok ? await response.json() : null;
  if (source) source.close();
  messages.replaceChildren();
  seen = new Set();
  phone = answer ? answer.phone : asked;
  phoneInput.value = phone;
  const url = new URL(location.href);
  url.searchParams.set("phone", phone);
  history.replaceState(null, "", url);
  document.title = `botkit sandbox · ${phone}`;
  source = new EventSource(`/sandbox/chat/events?phone=${encodeURIComponent(phone)}`);
  source.onmessage = (message) => handle(JSON.parse(message.data));
  if (answer) showState(answer);
  // The browser reconnects by itself; the page says when the server is gone and back.
  source.onopen = () => { connection.hidden = true; };
  source.onerror = () => { connection.hidden = false; };
}

function notice(text, kind = "error") {
  messages.appendChild(el("div", `notice ${kind}`, text));
  scrollDown();
}

// POST JSON; returns the response, or null when the server did not answer (said on the page).
async function post(path, body, what) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (error) {
    connection.hidden = false;
    notice(`${what}: the server does not answer (is it running?)`);
    return null;
  }
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    notice(`${what}: ${answer.error || `error ${response.status}`}`);
  }
  return response;
}

document.getElementById("phone-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (phoneInput.value.trim()) open(phoneInput.value.trim());
});

document.getElementById("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = textInput.value.trim();
  if (!text) return;
  // The box is emptied only once the message was taken: a failed send keeps the text.
  const response = await post("/sandbox/chat/send", { phone, text }, "Not sent");
  if (response && response.ok && textInput.value.trim() === text) textInput.value = "";
  refreshStateSoon();
  textInput.focus();
});

document.getElementById("agent-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = agentText.value.trim();
  if (!text) return;
  const response = await post("/sandbox/chat/agent", { phone, text }, "Not sent as the agent");
  if (response && response.ok) agentText.value = "";
  refreshStateSoon();
});

document.getElementById("release").addEventListener("click", async () => {
  const response = await post("/sandbox/chat/release", { phone }, "Not released");
  if (response && response.ok) notice("Released: the bot answers again.", "info");
  refreshStateSoon();
});

// Why a start was skipped, in words for the person at the keyboard.
function plainSkip(flow, detail) {
  const at = /^already at '(.*)'$/.exec(detail || "");
  if (at) return `You are already in the ${flow}, at its question "${at[1]}": answer it there.`;
  if (/human/.test(detail || "")) {
    return "This conversation is with a person now: release it to the bot first.";
  }
  return `Not started: ${detail}`;
}

for (const button of document.querySelectorAll("button.start")) {
  button.addEventListener("click", async () => {
    const response = await post("/sandbox/chat/start", { phone, flow: button.dataset.flow },
                                `Not started`);
    if (!response || !response.ok) return;
    const answer = await response.json().catch(() => ({}));
    if (answer.outcome === "skipped") notice(plainSkip(button.dataset.flow, answer.detail), "info");
  });
}

open(new URL(location.href).searchParams.get("phone") || randomPhone());
