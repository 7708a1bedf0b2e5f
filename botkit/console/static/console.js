// The inbox refreshes itself: every 2 seconds it reads /console/api/inbox and redraws the
// table and the tab's title. Text from users goes in with textContent, never as HTML.
"use strict";

function ago(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
}

function draw(table, waiting) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const c of waiting) {
    const row = document.createElement("tr");
    row.dataset.id = c.id;
    const link = document.createElement("a");
    link.href = c.url;
    link.textContent = c.phone;
    cell(row, link);
    cell(row, c.flow + " · " + c.step);
    cell(row, c.agent || "nobody yet");
    cell(row, ago(c.quiet_for));
    cell(row, new Date(c.since * 1000).toLocaleString());
    body.appendChild(row);
  }
  document.getElementById("count").textContent = waiting.length;
  document.getElementById("empty").hidden = waiting.length > 0;
  const title = document.title.replace(/^\(\d+\) /, "");
  document.title = (waiting.length ? "(" + waiting.length + ") " : "") + title;
}

async function refresh(table) {
  try {
    const answer = await fetch(table.dataset.feed, {headers: {"Accept": "application/json"}});
    if (answer.status === 401) { window.location.reload(); return; }
    if (answer.ok) draw(table, (await answer.json()).waiting);
  } catch (e) { /* the server restarts: try again at the next tick */ }
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("inbox");
  if (table) setInterval(() => refresh(table), 2000);
});
