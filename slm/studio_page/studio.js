// The story studio's page: asks /generate for a story, reads its server-sent events as they come,
// and shows each token shaded by its probability, with the 5 likeliest tokens of its position.
"use strict";

const EOT_ID = 50256;
const $ = (id) => document.getElementById(id);
const state = {
  tokens: [],        // {text, id, p, top, chosen} for each token after the prompt
  prompt: "",        // the prompt of the story shown
  seed: null,        // the seed that wrote it (the server picks one when the box is empty)
  controller: null,  // aborts the running request: Stop, or a rewrite
  selected: null,    // index of the token the inspector shows
};

// Confident tokens green, surprising ones red. The hue follows log10(p) from 0.1% to 100%: most
// probabilities a language model gives are small, and a linear scale would paint them all red.
function shade(p) {
  const t = Math.min(1, Math.max(0, 1 + Math.log10(Math.max(p, 1e-9)) / 3));
  return `hsl(${Math.round(8 + 112 * t)}, 78%, 84%)`;
}

// Whitespace made visible, so " the" and "\n" can be told apart in the alternatives.
function visible(text) {
  return text.replace(/\n/g, "\u23ce").replace(/ /g, "\u00b7") || "\u2205";
}

function percent(p) {
  return p >= 0.1 ? `${(100 * p).toFixed(0)}%` : `${(100 * p).toFixed(1)}%`;
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
  $("story").dataset.state = kind;
  const busy = kind === "writing";
  $("write").disabled = busy;
  $("stop").disabled = !busy;
}

async function showFacts() {
  const info = await (await fetch("/info")).json();
  const c = info.config;
  const loss = info.val_loss === null ? "not recorded" : info.val_loss.toFixed(3);
  $("facts").textContent =
    `${info.checkpoint} \u00b7 step ${info.step} \u00b7 validation loss ${loss} \u00b7 ` +
    `${(info.params / 1e6).toFixed(1)}M parameters (${c.n_layer} layers \u00d7 ${c.n_embd} wide, ` +
    `context ${c.block_size}) \u00b7 ${info.data} \u00b7 ${info.device}, ${info.dtype}`;
  $("length").max = info.limits.max_new_tokens;
  $("top-k").max = info.limits.top_k;
}

function tokenSpan(tok, i) {
  const span = document.createElement("span");
  span.className = tok.chosen ? "tok chosen" : "tok";
  span.textContent = tok.text;
  span.tabIndex = 0;
  span.dataset.i = i;
  span.dataset.id = tok.id;
  span.dataset.p = tok.p;
  span.style.backgroundColor = shade(tok.p);
  span.title = `p = ${percent(tok.p)}`;
  span.addEventListener("mouseenter", () => inspect(i));
  span.addEventListener("focus", () => inspect(i));
  return span;
}

function render() {
  const story = $("story");
  story.querySelectorAll(".tok").forEach((el) => el.remove());
  $("story-prompt").textContent = state.prompt;
  state.tokens.forEach((tok, i) => story.appendChild(tokenSpan(tok, i)));
}

// The inspector: the token's probability, then the 5 likeliest tokens there, each a button that
// rewrites the story from this position with that token.
function inspect(i) {
  const tok = state.tokens[i];
  if (!tok) return;
  state.selected = i;
  document.querySelectorAll(".tok.selected").forEach((el) => el.classList.remove("selected"));
  const span = $("story").querySelector(`.tok[data-i="${i}"]`);
  if (span) span.classList.add("selected");
  const box = $("inspector");
  box.replaceChildren();
  const head = document.createElement("p");
  head.className = "picked";
  head.textContent = `token ${i + 1}: \u201c${visible(tok.text)}\u201d, p = ${percent(tok.p)}` +
    (tok.chosen ? " (your choice)" : "");
  box.appendChild(head);
  const list = document.createElement("ol");
  list.className = "alternatives";
  for (const alt of tok.top) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = alt.id === tok.id ? "alt current" : "alt";
    button.dataset.id = alt.id;
    button.dataset.p = alt.p;
    button.title = `rewrite the story from here with \u201c${visible(alt.text)}\u201d`;
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = alt.id === EOT_ID ? "<|endoftext|>" : visible(alt.text);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * alt.p)}%`;
    bar.style.backgroundColor = shade(alt.p);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = percent(alt.p);
    button.append(word, bar, prob);
    button.addEventListener("click", () => rewrite(i, alt));
    item.appendChild(button);
    list.appendChild(item);
  }
  box.appendChild(list);
}

function settings() {
  const topP = Number($("top-p").value);
  const seed = $("seed").value.trim();
  return {
    temperature: Number($("temperature").value),
    top_k: Math.round(Number($("top-k").value)),
    top_p: topP >= 1 ? null : topP,
    seed: seed === "" ? null : Math.round(Number(seed)),
  };
}

// One request: POST /generate, then each event as it arrives (a fetch stream, since EventSource
// cannot POST). Aborting the fetch closes the connection, and the server stops the story.
async function generate(body) {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  setStatus("writing...", "writing");
  const started = state.tokens.length;
  try {
    const response = await fetch("/generate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({error: response.statusText}));
      setStatus(`refused: ${error.error}`, "error");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)), started);
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") setStatus(`failed: ${err.message}`, "error");
  } finally {
    if (state.controller === controller) state.controller = null;
  }
}

function onEvent(event, started) {
  if (event.done) {
    state.seed = event.seed;
    const how = {end_of_text: "ended at <|endoftext|>", length: "reached its length"};
    setStatus(`${state.tokens.length} tokens (${how[event.reason] || event.reason}); ` +
      `${event.tokens} written in ${event.seconds} s, seed ${event.seed}`, "done");
    return;
  }
  const i = state.tokens.length;
  state.tokens.push(event);
  $("story").appendChild(tokenSpan(event, i));
  $("status").textContent = `writing... ${i + 1 - started} tokens`;
}

function write() {
  state.prompt = $("prompt").value;
  state.tokens = [];
  state.selected = null;
  $("inspector").querySelectorAll("ol, .picked").forEach((el) => el.remove());
  render();
  const s = settings();
  generate({prompt: state.prompt, max_new_tokens: Number($("length").value), ...s});
}

function stop() {
  if (!state.controller) return;
  state.controller.abort();
  state.controller = null;
  setStatus(`stopped after ${state.tokens.length} tokens`, "stopped");
}

// Keep the story up to token i, put alt there, and let the model continue from it.
function rewrite(i, alt) {
  if (state.controller) state.controller.abort();
  const top = state.tokens[i].top;
  state.tokens = state.tokens.slice(0, i);
  state.tokens.push({text: alt.text, id: alt.id, p: alt.p, top: top, chosen: true});
  render();
  inspect(i);
  if (alt.id === EOT_ID) {
    state.tokens.pop();
    render();
    setStatus("the story ends here (<|endoftext|>)", "done");
    return;
  }
  const s = settings();
  generate({
    prompt: state.prompt,
    after: state.tokens.map((t) => t.id),
    max_new_tokens: Math.max(1, Number($("length").value) - state.tokens.length),
    ...s,
    seed: s.seed === null ? state.seed : s.seed,
  });
}

function init() {
  const temperature = $("temperature");
  const show = () => { $("temperature-shown").textContent = Number(temperature.value).toFixed(2); };
  temperature.addEventListener("input", show);
  show();
  $("write").addEventListener("click", write);
  $("stop").addEventListener("click", stop);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) write();
  });
  showFacts().catch((err) => { $("facts").textContent = `no model facts: ${err.message}`; });
}

document.addEventListener("DOMContentLoaded", init);
