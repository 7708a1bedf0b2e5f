// The console's live pages. The server sends an event (/console/api/events) whenever the
// database has something new; the inbox then reads /console/api/inbox, a conversation
// its own JSON and the campaigns page /console/api/campaigns (also every few seconds while
// a campaign runs), and redraws. Text from users goes in with textContent, never as HTML.
"use strict";

function ago(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function clock(at) {
  const d = new Date(at * 1000), two = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
    two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function drawInbox(table, waiting) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of waiting) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    const link = element("a", c.phone);
    link.href = c.url;
    const first = document.createElement("td");
    first.appendChild(link);
    row.appendChild(first);
    for (const text of [c.flow + " · " + c.step, c.agent || "nobody yet", ago(c.waited),
                        clock(c.since)]) {
      row.appendChild(element("td", text));
    }
    body.appendChild(row);
  }
  document.getElementById("count").textContent = waiting.length;
  document.getElementById("empty").hidden = waiting.length > 0;
  const title = document.title.replace(/^\(\d+\) /, "");
  document.title = (waiting.length ? "(" + waiting.length + ") " : "") + title;
}

function drawTranscript(list, conversation) {
  list.replaceChildren();
  for (const m of conversation.history) {
    const item = element("li", undefined, m.direction);
    item.appendChild(element("p", m.text, "text"));
    item.appendChild(element("p", clock(m.at) + " · " + m.detail, "meta"));
    list.appendChild(item);
  }
  if (!conversation.history.length) list.appendChild(element("li", "No messages yet.", "none"));
  const holder = document.getElementById("holder");
  if (holder) holder.textContent = conversation.agent || "nobody yet";
  drawActions(conversation.actions);
}

const LINKED = {took_over: "from ", resumed: "at "};  // what an action's detail names

function drawActions(actions) {
  const list = document.getElementById("actions");
  if (!list) return;
  list.replaceChildren();
  for (const a of actions) {
    const detail = a.detail ? " " + (LINKED[a.action] || "") + a.detail : "";
    list.appendChild(element("li", clock(a.at) + " · " + a.agent + " " +
                                   a.action.replace(/_/g, " ") + detail));
  }
  document.getElementById("actions-title").hidden = actions.length === 0;
}

const SVG = "http://www.w3.org/2000/svg";
const CAMPAIGN_TICK = 2000;  // ms between reads while a campaign runs (a send moves no event)
let campaignTick = null;

function bar(parts) {  // SVG attributes, no style: the page's CSP allows no inline style
  const svg = document.createElementNS(SVG, "svg");
  for (const [name, value] of [["class", "bar"], ["viewBox", "0 0 100 8"],
                               ["preserveAspectRatio", "none"], ["role", "img"],
                               ["aria-label", "progress"]]) svg.setAttribute(name, value);
  const rect = (className, x, width) => {
    const r = document.createElementNS(SVG, "rect");
    for (const [name, value] of [["class", className], ["x", x], ["y", 0], ["width", width],
                                 ["height", 8]]) r.setAttribute(name, String(value));
    svg.appendChild(r);
  };
  rect("whole", 0, 100);
  for (const p of parts) rect("part " + p.part, p.x, p.width);
  return svg;
}

function drawCampaigns(table, data) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of data.campaigns) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    const run = document.createElement("td");
    run.append(element("span", c.kind, "kind"), " ", element("span", c.name, "name"));
    row.appendChild(run);
    row.appendChild(element("td", c.total + (c.skipped ? " (" + c.skipped + " skipped)" : "")));
    row.appendChild(element("td", clock(c.started_at)));
    const progress = element("td", undefined, "progress");
    progress.append(bar(c.bar), element("span", "queued " + c.queued + " · sent " + c.sent +
      " · delivered " + c.delivered + " · failed " + c.failed + " · uncertain " + c.uncertain +
      (c.refused ? " · refused " + c.refused : ""), "counts"));
    row.appendChild(progress);
    row.appendChild(element("td", c.rate === null ? "–" : c.rate.toFixed(1) + "/s"));
    row.appendChild(element("td", c.remaining === null ? "–" : "about " + ago(c.remaining)));
    row.appendChild(element("td", c.state + (c.finished_at === null ? "" : " " +
      clock(c.finished_at)), "state" + (c.running ? " running" : "")));
    body.appendChild(row);
  }
  document.getElementById("no-campaigns").hidden = data.campaigns.length > 0;
  if (data.running && campaignTick === null) {
    campaignTick = setTimeout(() => { campaignTick = null; refresh(); }, CAMPAIGN_TICK);
  }
}

async function read(url) {
  const answer = await fetch(url, {headers: {"Accept": "application/json"}});
  if (answer.status === 401) { window.location.reload(); return null; }
  return answer.ok ? answer.json() : null;
}

async function refresh() {
  try {
    const table = document.getElementById("inbox");
    if (table) {
      const inbox = await read(table.dataset.feed);
      if (inbox) drawInbox(table, inbox.waiting);
    }
    const campaigns = document.getElementById("campaigns");
    if (campaigns) {
      const data = await read(campaigns.dataset.feed);
      if (data) drawCampaigns(campaigns, data);
    }
    const list = document.getElementById("transcript");
    if (list) {
      const conversation = await read(list.dataset.feed);
      if (conversation) drawTranscript(list, conversation);
    }
  } catch (e) { /* the server restarts: the next event or tick tries again */ }
}

document.addEventListener("DOMContentLoaded", () => {
  const canned = document.getElementById("canned");
  if (canned) {  // a canned reply goes into the box, to edit before sending
    canned.addEventListener("change", () => {
      const chosen = canned.selectedOptions[0];
      if (chosen && chosen.dataset.text) {
        const box = document.querySelector("textarea[name=text]");
        box.value = chosen.dataset.text;
        box.focus();
      }
    });
  }
  const events = document.body.dataset.events;
  if (!events) return;  // the login page
  new EventSource(events).onmessage = refresh;
  if (document.getElementById("campaigns")) refresh();  // a running one: its tick starts
  setInterval(refresh, 30000);  // the times shown ("quiet for") move on meanwhile
});
