// The labelling page. Model text and prompts are only ever set with textContent: markup in an output shows
// as characters and never becomes an element. State for tests and people: body[data-state] is loading |
// ready | arena | empty | error, and #item[data-item-id] names the item on screen.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let mode = "pair", item = null, submitId = "", ranking = [], busy = false;

function setState(s) { document.body.dataset.state = s; }
function status(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }

// A fresh id per item shown: a double click or a retry sends the same one, and the server stores it once.
// (crypto.getRandomValues, unlike randomUUID, works on plain http from another machine on the LAN.)
function newSubmitId() {
  const b = new Uint8Array(16); crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function api(method, path, body) {
  const r = await fetch(path, {method, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
                               body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON: reported below */ }
  if (!r.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

function show(it) {
  item = it; submitId = newSubmitId(); ranking = [];
  $("arena-box").hidden = true; $("empty").hidden = true; $("item").hidden = false;
  $("item").dataset.itemId = String(it.item_id); $("item").dataset.kind = it.kind;
  $("prompt").textContent = it.prompt;
  const outs = $("outputs"); outs.replaceChildren();
  it.outputs.forEach((text, pos) => {
    const box = document.createElement("div"); box.className = "output"; box.dataset.pos = String(pos);
    const role = document.createElement("div"); role.className = "role";
    role.textContent = it.kind === "binary" ? "Output" : (it.kind === "pair" ? "AB"[pos] : String(pos + 1));
    const rank = document.createElement("span"); rank.className = "rank";
    const t = document.createElement("div"); t.className = "text"; t.textContent = text;
    role.appendChild(rank); box.append(role, t);
    if (it.kind === "ranking") box.addEventListener("click", () => rankAdd(pos));
    outs.appendChild(box);
  });
  for (const k of ["pair", "ranking", "binary"]) $("controls-" + k).hidden = k !== it.kind;
  $("comment").value = "";
  drawRanking();
  setState("ready"); status("");
}

function drawRanking() {
  if (!item || item.kind !== "ranking") return;
  document.querySelectorAll(".output").forEach((box) => {
    const i = ranking.indexOf(Number(box.dataset.pos));
    box.classList.toggle("ranked", i >= 0);
    box.querySelector(".rank").textContent = i >= 0 ? "#" + (i + 1) : "";
  });
  $("rank-order").textContent = ranking.map((p) => p + 1).join(" > ");
  $("rank-submit").disabled = ranking.length !== item.outputs.length;
}

function rankAdd(pos) {
  if (!item || item.kind !== "ranking" || ranking.includes(pos) || pos >= item.outputs.length) return;
  ranking.push(pos);
  if (ranking.length === item.outputs.length - 1)  // the last one is implied
    ranking.push(item.outputs.findIndex((_, p) => !ranking.includes(p)));
  drawRanking();
}

async function submit(answer) {
  if (!item || busy) return;
  busy = true; setState("loading");
  const body = Object.assign({item_id: item.item_id, submit_id: submitId, comment: $("comment").value}, answer);
  for (let attempt = 0; ; attempt++) {
    try {
      await api("POST", "/api/submit", body);
      break;
    } catch (e) {
      if (e instanceof TypeError && attempt < 5) {  // network: retry with the same submit_id (stored once)
        status("connection lost, retrying..."); await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
        continue;
      }
      busy = false; setState("ready"); status("not saved: " + e.message, true); return;
    }
  }
  busy = false;
  $("count").textContent = String(Number($("count").textContent) + 1);
  await next();
}

async function next() {
  setState("loading"); item = null;
  try {
    const data = await api("GET", "/api/next");
    if (data.item) return show(data.item);
    $("item").hidden = true; $("item").dataset.itemId = "";
    if (mode === "arena") { $("arena-box").hidden = false; $("arena-prompt").focus(); setState("arena"); }
    else { $("empty").hidden = false; setState("empty"); }
  } catch (e) { setState("error"); status(e.message, true); }
}

async function askArena() {
  const prompt = $("arena-prompt").value;
  if (!prompt.trim() || busy) return;
  busy = true; setState("loading"); status("the two models are answering...");
  try {
    const data = await api("POST", "/api/arena", {prompt});
    $("arena-prompt").value = ""; busy = false; show(data.item);
  } catch (e) { busy = false; setState("arena"); status(e.message, true); }
}

document.querySelectorAll("[data-choice]").forEach((b) => b.addEventListener("click", () => submit({choice: b.dataset.choice})));
$("rank-submit").addEventListener("click", () => submit({ranking}));
$("rank-reset").addEventListener("click", () => { ranking = []; drawRanking(); });
$("arena-send").addEventListener("click", askArena);
$("reload").addEventListener("click", next);

const KEYS = {pair: {a: "A", 1: "A", b: "B", 2: "B", t: "tie", 3: "tie", x: "both_bad", 4: "both_bad"},
              binary: {u: "up", "+": "up", ArrowUp: "up", d: "down", "-": "down", ArrowDown: "down"}};
document.addEventListener("keydown", (e) => {
  const typing = e.target instanceof HTMLTextAreaElement || e.target instanceof HTMLInputElement;
  if (typing) {
    if (e.key === "Escape") e.target.blur();
    else if (e.target.id === "arena-prompt" && e.key === "Enter" && (e.ctrlKey || e.metaKey)) askArena();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey || !item || busy || document.body.dataset.state !== "ready") return;
  if (e.key === "c") { e.preventDefault(); $("comment").focus(); return; }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (item.kind === "ranking") {
    if (/^[1-9]$/.test(key)) rankAdd(Number(key) - 1);
    else if (key === "Backspace") { ranking = []; drawRanking(); }
    else if (key === "Enter" && ranking.length === item.outputs.length) submit({ranking});
    else return;
  } else if (KEYS[item.kind][key]) submit({choice: KEYS[item.kind][key]});
  else return;
  e.preventDefault();
});

(async () => {
  if (!token) { setState("error"); status("missing token: open the link you were given (it ends in ?token=...)", true); return; }
  try {
    const me = await api("GET", "/api/me");
    mode = me.mode; $("who").textContent = me.labeller; $("count").textContent = String(me.labelled);
  } catch (e) { setState("error"); status(e.message, true); return; }
  await next();
})();
