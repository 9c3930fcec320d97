// The chat page: plain JS, no build. Model text is only ever put in the page as TEXT (textContent /
// text nodes), never parsed as HTML, so a completion like "<img src=x onerror=...>" shows literally.
// The server sends a Content-Security-Policy that allows this file and no inline script. A server started
// with --api-key needs the key on every /v1 request: the "API key" field supplies it (kept only in the page).
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // [{role, content}] sent with every request
let controller = null;  // aborting the fetch closes the connection: the server stops generating

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  box.append(label, body);
  $("log").append(box);
  box.scrollIntoView({block: "end"});
  return body;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = busy ? "generating…" : "";
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? {"Authorization": "Bearer " + key} : {};
}

async function loadModels() {
  $("model").replaceChildren();
  const res = await fetch("/v1/models", {headers: authHeaders()});
  if (res.status === 401) {
    $("status").textContent = "this server needs an API key: enter it above";
    return;
  }
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
  $("status").textContent = "";
  for (const m of data.data) {
    if (m.kind === "reward") continue;  // scored on /v1/rewards: nothing to chat with
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = `${m.id} (${m.quantize}, ${m.max_model_len} tokens)`;
    $("model").append(opt);
  }
}

// Server-Sent Events over fetch (EventSource cannot POST): events are separated by a blank line,
// each "data:" line carries one JSON chunk; "[DONE]" ends the stream.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const out = addMessage("assistant", "");
  const reply = document.createTextNode("");
  out.append(reply);
  controller = new AbortController();
  let finish = null;
  setBusy(true);
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json", ...authHeaders()},
      signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value, messages: history, stream: true,
        temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value),
      }),
    });
    if (!res.ok) {
      const err = await res.json().catch(() => ({error: {message: res.statusText}}));
      throw new Error(err.error.message);
    }
    for await (const chunk of sseEvents(res)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) reply.appendData(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    history.push({role: "assistant", content: reply.data});
    out.parentElement.dataset.done = "true";
    setBusy(false);
    $("status").textContent = "finished: " + finish;
  } catch (e) {
    setBusy(false);
    if (e.name === "AbortError") {
      history.push({role: "assistant", content: reply.data});
      out.parentElement.dataset.done = "stopped";
    } else {
      out.parentElement.remove();
      history.pop();
      addMessage("error", String(e.message || e)).parentElement.dataset.done = "error";
    }
  } finally {
    controller = null;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => { history.length = 0; $("log").replaceChildren(); });
const reloadModels = () => loadModels().catch((e) => { $("status").textContent = "cannot list models: " + e.message; });
$("api-key").addEventListener("change", reloadModels);
reloadModels();
