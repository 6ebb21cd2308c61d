// ise's chat page: streams /v1/chat/completions over server-sent events with fetch.
// Everything the model or the user wrote goes into the page as text (textContent), never as HTML.
"use strict";

const KEY_STORE = "ise-api-key";
const CONVERSATION_STORE = "ise-conversation";
const $ = (id) => document.getElementById(id);

let conversation = JSON.parse(sessionStorage.getItem(CONVERSATION_STORE) || "[]");
let running = null; // the AbortController of the request in flight
let modelsAsked = 0; // a newer listing (the key changed meanwhile) wins over an older one

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

// An error response's message, in OpenAI's shape ({"error": {"message": ...}}) when it has one.
async function errorText(response) {
  const body = await response.text();
  try {
    const message = JSON.parse(body).error.message;
    if (message) return message;
  } catch (_) { /* not JSON: show the status */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function keyProblem(message) {
  $("key-row").hidden = false;
  const sent = Boolean(sessionStorage.getItem(KEY_STORE));
  notice(sent
    ? `The server refused this API key: ${message}`
    : "This server needs an API key: enter it in the API key field.");
  if (!sent) $("api-key").focus();
}

async function loadModels() {
  const asked = ++modelsAsked;
  let response, cards, problem;
  try {
    response = await fetch("/v1/models", { headers: headers() });
    if (response.ok) cards = (await response.json()).data;
    else problem = await errorText(response);
  } catch (error) {
    if (asked === modelsAsked) notice(`Cannot reach the server: ${error.message}`);
    return;
  }
  if (asked !== modelsAsked) return;
  if (response.status === 401) {
    keyProblem(problem);
    return;
  }
  if (!response.ok) {
    notice(`Listing the models failed: ${problem}`);
    return;
  }
  notice("");
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  // Only models that chat: an embedding model served beside them has nothing to say.
  for (const card of cards.filter((c) => !c.capabilities || c.capabilities.includes("chat"))) {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = card.id;
    select.append(option);
  }
  if (previous) select.value = previous;
  if (!select.value && select.options.length) select.selectedIndex = 0;
}

function messageElement(message) {
  const box = document.createElement("div");
  box.className = `message ${message.role}`;
  const role = document.createElement("div");
  role.className = "role";
  const name = document.createElement("span");
  name.textContent = message.role === "user" ? "You" : "Assistant";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyText(message.content, copy));
  role.append(name, copy);
  const reasoning = document.createElement("details");
  reasoning.className = "reasoning";
  reasoning.hidden = !message.reasoning;
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const thought = document.createElement("div");
  thought.textContent = message.reasoning || "";
  reasoning.append(summary, thought);
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = message.content;
  const stats = document.createElement("div");
  stats.className = "stats";
  stats.textContent = message.stats || "";
  box.append(role, reasoning, content, stats);
  if (message.stopped) {
    const stopped = document.createElement("div");
    stopped.className = "stopped";
    stopped.textContent = "Stopped.";
    box.append(stopped);
  }
  $("conversation").append(box);
  box.scrollIntoView({ block: "end" });
  return { box, reasoning, thought, content, stats };
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard API (a page not served over https or loopback): the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function save() {
  sessionStorage.setItem(CONVERSATION_STORE, JSON.stringify(conversation));
}

function render() {
  $("conversation").replaceChildren();
  conversation.forEach(messageElement);
}

function ms(value) {
  return `${value.toLocaleString(undefined, { maximumFractionDigits: value < 10 ? 1 : 0 })} ms`;
}

// "TTFT 120 ms · 25.3 tok/s · 64 tokens · server: queue 1 ms, prefill 40 ms, decode 2,100 ms"
function statsText(t) {
  const parts = [];
  if (t.first !== null) parts.push(`TTFT ${ms(t.first - t.start)}`);
  if (t.tokens > 1 && t.last > t.first) parts.push(`${((t.tokens - 1) / ((t.last - t.first) / 1000)).toFixed(1)} tok/s`);
  parts.push(`${t.tokens} tokens` + (t.finish === "length" ? " (cut at max tokens)" : ""));
  if (t.server) {
    const phases = ["queue", "prefill", "decode", "total"].filter((p) => typeof t.server[p] === "number");
    parts.push("server: " + phases.map((p) => `${p} ${ms(t.server[p])}`).join(", "));
  }
  return parts.join(" · ");
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conversation) messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

// Each server-sent event's data, as the stream delivers it: "data: {json}" lines, "[DONE]" last.
// Aborting the fetch makes the next read throw, and closes the connection: the server then aborts
// the request in its engine.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (line.startsWith("data:")) yield line.slice(5).trim();
    }
  }
}

async function ask(text) {
  notice("");
  const thread = conversation; // Clear while streaming starts a new one: this answer is dropped
  thread.push({ role: "user", content: text });
  messageElement(thread[thread.length - 1]);
  const body = requestBody();
  const answer = { role: "assistant", content: "", reasoning: "" };
  const view = messageElement(answer);
  const timing = { start: performance.now(), first: null, last: null, tokens: 0, server: null, finish: null };
  const controller = new AbortController();
  running = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (response.status === 401) {
      keyProblem(await errorText(response));
      throw new Error("unauthorized");
    }
    if (!response.ok) {
      notice(`The request failed: ${await errorText(response)}`);
      throw new Error("failed");
    }
    let counted = 0;
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        notice(`The answer failed: ${chunk.error.message}`);
        break;
      }
      if (chunk.usage) {
        timing.tokens = chunk.usage.completion_tokens;
        timing.server = chunk.usage.server_timing || null;
      }
      const choice = (chunk.choices && chunk.choices[0]) || {};
      const delta = choice.delta || {};
      if (choice.finish_reason) timing.finish = choice.finish_reason;
      if (delta.content || delta.reasoning_content) {
        const now = performance.now();
        if (timing.first === null) timing.first = now;
        timing.last = now;
        counted += 1;
        if (!timing.server) timing.tokens = counted;
      }
      if (delta.reasoning_content) {
        answer.reasoning += delta.reasoning_content;
        view.thought.textContent = answer.reasoning;
        view.reasoning.hidden = false;
      }
      if (delta.content) {
        answer.content += delta.content;
        view.content.textContent = answer.content;
      }
      view.stats.textContent = statsText(timing);
    }
  } catch (error) {
    if (!controller.signal.aborted && error.message !== "unauthorized" && error.message !== "failed") {
      notice(`The request failed: ${error.message}`);
    }
  } finally {
    answer.stopped = controller.signal.aborted;
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  answer.stats = statsText(timing);
  if (thread !== conversation) return;
  if (answer.content || answer.reasoning || answer.stopped) {
    thread.push(answer);
  } else {
    thread.pop(); // nothing came back: the question goes back in the box, to send again
    $("prompt").value = text;
  }
  save();
  render();
}

function init() {
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) {
    $("api-key").value = key;
    $("key-row").hidden = false;
  }
  $("api-key").addEventListener("change", () => {
    const value = $("api-key").value.trim();
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || running) return;
    $("prompt").value = "";
    ask(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("clear").addEventListener("click", () => {
    if (running) running.abort();
    conversation = [];
    save();
    render();
  });
  render();
  loadModels();
}

init();
