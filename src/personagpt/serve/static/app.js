// PersonaGPT chat page: plain JavaScript over the server's own HTTP API (no build step, nothing fetched from
// elsewhere). The conversation, persona and settings live in localStorage, so a reload keeps them.
"use strict";

const MAX_FACTS = 5;
const STORE = "personagpt.page.v1";
const $ = (id) => document.getElementById(id);

const state = Object.assign(
  { facts: ["i have two dogs.", "i work as a nurse."], messages: [], pendingGoal: null,
    settings: { topK: 10, topP: 0.92, temperature: 1, maxTokens: 64, seed: "", apiKey: "" } },
  JSON.parse(localStorage.getItem(STORE) || "{}"));
let goals = [];
let controller = null;

function save() { localStorage.setItem(STORE, JSON.stringify(state)); }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.settings.apiKey) h.Authorization = "Bearer " + state.settings.apiKey;
  return h;
}

function showError(where, message) {
  const box = $(where);
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error) return `${body.error.message} (HTTP ${response.status})`;
    if (body.detail) return `${body.detail} (HTTP ${response.status})`;
  } catch (e) { /* not JSON */ }
  return `The server answered HTTP ${response.status}.`;
}

// ---- persona --------------------------------------------------------------------------------------------------

function renderFacts() {
  const list = $("facts");
  list.replaceChildren();
  state.facts.forEach((fact, i) => {
    const item = document.createElement("li");
    const row = document.createElement("div");
    const input = document.createElement("input");
    input.type = "text";
    input.value = fact;
    input.id = `fact-${i}`;
    input.setAttribute("aria-label", `Persona fact ${i + 1}`);
    input.addEventListener("change", () => setFacts(state.facts.map((f, j) => (j === i ? input.value : f))));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `Remove fact ${i + 1}`);
    remove.addEventListener("click", () => setFacts(state.facts.filter((_, j) => j !== i)));
    row.append(input, remove);
    item.append(row);
    list.append(item);
  });
  $("add-fact").disabled = state.facts.length >= MAX_FACTS;
}

function setFacts(facts) {
  const cleaned = facts.map((f) => f.trim()).filter(Boolean).slice(0, MAX_FACTS);
  const changed = JSON.stringify(cleaned) !== JSON.stringify(state.facts);
  state.facts = cleaned;
  if (changed) newChat();
  renderFacts();
  renderMessages();
  save();
}

async function randomPersona() {
  const response = await fetch("/v1/personas/random", { headers: headers() });
  if (!response.ok) return showError("chat-error", await errorMessage(response));
  setFacts((await response.json()).persona);
}

function download(name, text, type) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}

async function importCard(file) {
  // a character card (PNG, or JSON with a spec): the server reads it into facts as it reads a system prompt
  const response = await fetch("/v1/cards", { method: "POST", headers: headers(), body: file });
  if (!response.ok) return showError("chat-error", `Could not import ${file.name}: ${await errorMessage(response)}`);
  const card = await response.json();
  setFacts(card.persona);
  if (card.greetings.length && !state.messages.length) {  // the card's greeting opens the chat
    state.messages.push({ role: "assistant", content: card.greetings[0] });
    renderMessages();
  }
  const left = card.persona_left_out.length ? ` Left out: ${card.persona_left_out.join(" ")}` : "";
  showError("chat-error", "");
  $("card-note").textContent = `From ${card.name}'s card: ${card.persona.length} facts.${left}`;
}

async function importPersona(file) {
  const head = new Uint8Array(await file.slice(0, 8).arrayBuffer());
  const text = head[0] === 0x89 ? null : await file.text();
  if (text === null || /"spec"\s*:\s*"chara_card/.test(text)) return importCard(file);
  try {
    const data = JSON.parse(text);
    const facts = Array.isArray(data) ? data : data.persona;
    if (!Array.isArray(facts) || !facts.every((f) => typeof f === "string") || facts.length > MAX_FACTS)
      throw new Error(`expected {"persona": [up to ${MAX_FACTS} facts]}`);
    setFacts(facts);
    showError("chat-error", "");
  } catch (e) {
    showError("chat-error", `Could not import ${file.name}: ${e.message}`);
  }
}

// ---- chat -------------------------------------------------------------------------------------------------------

function messageElement(message) {
  const box = document.createElement("div");
  box.className = `msg ${message.role}`;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = message.role === "user" ? "You" : "Bot" + (message.goal ? ` [${message.goal}]` : "");
  if (message.goal && message.accepted !== undefined && message.accepted !== null) {
    const badge = document.createElement("span");
    badge.className = "badge " + (message.accepted ? "yes" : "no");
    badge.textContent = message.accepted ? "✓ goal met" : "✗ goal not met";
    meta.append(badge);
  }
  if (message.stopped) {  // Stop came before any reply: say so, and what happens to it
    box.classList.add("stopped");
    const badge = document.createElement("span");
    badge.className = "badge stopped";
    badge.textContent = "stopped: not answered; your next message replaces it";
    meta.append(badge);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.content;
  box.append(meta, text);
  return box;
}

function emptyHint() {
  // first load: who the bot is and how to steer it, instead of an empty white box
  const box = document.createElement("div");
  box.className = "empty";
  const who = document.createElement("p");
  who.append("You are talking with a bot who says: ");
  const facts = document.createElement("strong");
  facts.textContent = state.facts.length ? state.facts.join(" ") : "(no persona yet: add facts in the Persona panel)";
  who.append(facts);
  const how = document.createElement("p");
  how.textContent = "Say hi below. To steer its next reply, open \u201cSteer the next reply\u201d and pick a goal " +
    "such as \u201cask about pets.\u201d; the Persona panel edits the facts or draws a random persona.";
  box.append(who, how);
  return box;
}

function renderMessages() {
  $("messages").replaceChildren(...(state.messages.length ? state.messages.map(messageElement) : [emptyHint()]));
  $("messages").scrollTop = $("messages").scrollHeight;
  document.querySelectorAll("#goal-buttons button").forEach((b) =>
    b.setAttribute("aria-pressed", String(b.dataset.goal === state.pendingGoal)));
  $("pending-goal").hidden = !state.pendingGoal;
  $("pending-goal-text").textContent = state.pendingGoal || "";
}

function newChat() {
  if (controller) controller.abort();
  state.messages = [];
  state.pendingGoal = null;
  showError("chat-error", "");
  renderMessages();
  save();
}

function numberOr(value, fallback) {
  const n = Number(value);
  return value === "" || value === null || Number.isNaN(n) ? fallback : n;
}

function requestBody(goal) {
  const s = state.settings;
  const body = {
    model: "personagpt", stream: true, persona: state.facts,
    messages: state.messages.filter((m) => m.content).map((m) => ({ role: m.role, content: m.content })),
    top_k: numberOr(s.topK, 10), top_p: numberOr(s.topP, 0.92), temperature: numberOr(s.temperature, 1),
    max_tokens: numberOr(s.maxTokens, 64),
  };
  if (s.seed !== "" && s.seed !== null) body.seed = numberOr(s.seed, undefined);
  if (goal) body.goal = goal;
  return body;
}

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function reply(goal, sent = null) {
  if (!state.facts.length && !goal) return showError("chat-error", "Give the bot at least one persona fact.");
  showError("chat-error", "");
  const message = { role: "assistant", content: "", goal: goal || undefined };
  const body = requestBody(goal);
  state.messages.push(message);
  renderMessages();
  const element = $("messages").lastElementChild;
  controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const chunk of serverEvents(response)) {
      const piece = chunk.choices[0].delta.content;
      if (piece) {
        message.content += piece;
        element.querySelector(".text").textContent = message.content;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if ("goal_accepted" in chunk) message.accepted = chunk.goal_accepted;
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      showError("chat-error", e.message);
      if (sent !== null && !message.content) {  // refused: give the message back to edit
        state.messages.splice(state.messages.length - 2, 1);
        $("input").value = sent;
      }
    }
  } finally {
    if (!message.content) {
      state.messages.pop();  // nothing came: leave no empty bubble
      const asked = state.messages[state.messages.length - 1];
      if (asked && asked.role === "user" && controller && controller.signal.aborted) asked.stopped = true;
    }
    controller = null;
    setBusy(false);
    renderMessages();
    save();
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.querySelectorAll("#goal-buttons button, #steer-free").forEach((b) => { b.disabled = busy; });
}

function send() {
  const text = $("input").value.trim();
  if (!text || controller) return;
  if (state.messages.length && state.messages[state.messages.length - 1].role === "user") state.messages.pop();
  state.messages.push({ role: "user", content: text });
  $("input").value = "";
  const goal = state.pendingGoal;
  state.pendingGoal = null;
  renderMessages();
  reply(goal, text);
}

function steer(goal) {
  if (!goal || controller) return;
  const last = state.messages[state.messages.length - 1];
  if (!last || last.role === "user") {
    reply(goal);  // the bot speaks next anyway: steer this reply now
  } else {
    state.pendingGoal = state.pendingGoal === goal ? null : goal;  // steer the reply to your next message
    renderMessages();
    save();
  }
}

function transcript() {
  const turns = state.messages.filter((m) => m.content);
  const botFirst = turns.length && turns[0].role === "assistant";
  const record = { turns: turns.map((m) => m.content), p1_facts: botFirst ? state.facts : [],
                   p2_facts: botFirst ? [] : state.facts };
  if (turns.some((m) => m.goal)) record.actions = turns.map((m) => m.goal || null);
  return JSON.stringify(record) + "\n";
}

// ---- self-play -------------------------------------------------------------------------------------------------

async function selfplay(event) {
  event.preventDefault();
  showError("selfplay-error", "");
  const list = $("selfplay-turns");
  list.replaceChildren();
  const goalsText = $("sp-goals").value.trim();
  const body = { turns: numberOr($("sp-turns").value, 4), stream: true,
                 max_tokens: numberOr(state.settings.maxTokens, 64), top_k: numberOr(state.settings.topK, 10),
                 top_p: numberOr(state.settings.topP, 0.92), temperature: numberOr(state.settings.temperature, 1) };
  if (!$("sp-random").checked) body.persona = state.facts;
  if (goalsText) body.goals = goalsText.split(",").map((g) => g.trim()).filter(Boolean)
    .map((g) => (/^\d+$/.test(g) ? Number(g) : g));
  if (state.settings.seed !== "") body.seed = numberOr(state.settings.seed, undefined);
  $("sp-run").disabled = true;
  $("sp-persona").textContent = body.persona ? "Persona: " + body.persona.join(" ") : "Persona: (random)";
  try {
    const response = await fetch("/v1/selfplay", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const item of serverEvents(response)) {
      if (item.error) throw new Error(item.error);
      if (item.transcript) {
        $("sp-persona").textContent = "Persona: " + item.transcript.p2_facts.join(" ");
        continue;
      }
      const li = document.createElement("li");
      li.className = "msg " + (item.role === "interviewer" ? "user" : "assistant");
      li.textContent = item.role === "interviewer" ? `Interviewer [${item.goal}]: ${item.text}` : `Bot: ${item.text}`;
      list.append(li);
    }
  } catch (e) {
    showError("selfplay-error", e.message);
  } finally {
    $("sp-run").disabled = false;
  }
}

// ---- wiring ----------------------------------------------------------------------------------------------------

function bindSettings() {
  const fields = { "top-k": "topK", "top-p": "topP", temperature: "temperature", "max-tokens": "maxTokens",
                   seed: "seed", "api-key": "apiKey" };
  for (const [id, key] of Object.entries(fields)) {
    $(id).value = state.settings[key] ?? "";
    $(id).addEventListener("change", () => { state.settings[key] = $(id).value; save(); });
  }
}

function showView(name) {
  for (const view of ["chat", "selfplay"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-selected", String(view === name));
  }
}

async function loadGoals() {
  try {
    const response = await fetch("/v1/goals", { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    goals = (await response.json()).goals;
  } catch (e) {
    showError("chat-error", `Could not load the action codes: ${e.message}`);
  }
  $("goal-buttons").replaceChildren(...goals.map(({ index, goal }) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.goal = goal;
    b.textContent = `${index} · ${goal}`;
    b.addEventListener("click", () => steer(goal));
    return b;
  }));
  renderMessages();
}

$("add-fact").addEventListener("click", () => {
  if (state.facts.length >= MAX_FACTS) return;
  state.facts.push("");
  renderFacts();
  $(`fact-${state.facts.length - 1}`).focus();
});
$("random-persona").addEventListener("click", randomPersona);
$("export-persona").addEventListener("click", () =>
  download("persona.json", JSON.stringify({ persona: state.facts }, null, 1), "application/json"));
$("import-button").addEventListener("click", () => $("import-persona").click());
$("import-persona").addEventListener("change", (e) => { if (e.target.files[0]) importPersona(e.target.files[0]); });
$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", newChat);
$("cancel-goal").addEventListener("click", () => { state.pendingGoal = null; renderMessages(); save(); });
$("download").addEventListener("click", () => download("transcript.jsonl", transcript(), "application/jsonl"));
$("steer-free").addEventListener("click", () => { steer($("free-goal").value.trim()); $("free-goal").value = ""; });
$("selfplay-form").addEventListener("submit", selfplay);
$("tab-chat").addEventListener("click", () => showView("chat"));
$("tab-selfplay").addEventListener("click", () => showView("selfplay"));

bindSettings();
renderFacts();
renderMessages();
loadGoals();
