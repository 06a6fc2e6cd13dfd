// The classifier page: pick a model, one file in, top-k bars out, via the same
// /v1/models/{name}/classify as every client.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "ln2d-token";

class PageError extends Error {}

// What each HTTP status means to a person looking at the page; `detail` is the server's message.
const EXPLAIN = {
  400: (detail) => `That file could not be read as an image: ${detail}.`,
  401: () => "This server needs an access token. Enter it under “Access token”, then try again.",
  404: (detail) => `That model is not being served now: ${detail}. Reload the page.`,
  413: (detail) => `That image is too large for this server: ${detail}.`,
  415: (detail) => `That kind of file is not accepted: ${detail}.`,
  503: (detail, retry) => `The server is busy right now. Try again in ${retry || "a few"} s.`,
  504: () => "The server took too long to answer. Try again.",
};

let models = new Map(); // name -> the newest ready version's details
let model = null; // the chosen one
let previewUrl = null;

async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new PageError("Cannot reach the server. Check that it is running, then try again.");
  }
  const body = await response.json().catch(() => null);
  if (response.ok) return body;
  if (response.status === 401) $("token-panel").open = true;
  const detail = typeof body?.error === "string" ? body.error : `HTTP ${response.status}`;
  const explain = EXPLAIN[response.status];
  throw new PageError(
    explain ? explain(detail, response.headers.get("Retry-After")) : `Server error: ${detail}.`,
  );
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
  if (message) $("status").textContent = "";
}

async function loadModels() {
  let listing;
  try {
    listing = await api("/v1/models");
  } catch (error) {
    $("model-info").textContent = "Model details unavailable.";
    showError(error.message);
    return;
  }
  // Sorted by name, then version: the last entry of a name is the version it serves.
  models = new Map(listing.models.map((entry) => [entry.name, entry]));
  const select = $("model");
  const chosen = model?.name ?? listing.default_model ?? listing.models[0]?.name;
  select.replaceChildren(
    ...[...models.keys()].map((name) => new Option(name, name, false, name === chosen)),
  );
  $("model-picker").hidden = models.size < 2;
  chooseModel(chosen);
}

function chooseModel(name) {
  model = models.get(name) ?? null;
  if (!model) {
    $("model-info").textContent = "No model is loaded on this server.";
    return;
  }
  const { channels, height, width } = model.input;
  $("model-info").textContent =
    `Model ${model.name} version ${model.version} · ${model.precision} · ${model.provider} · ` +
    `${model.labels.length} classes · ` +
    `input ${channels}×${height}×${width}`;
  $("top-k").max = model.labels.length;
  $("top-k").value = Math.min(model.top_k, model.labels.length);
  showError("");
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.hidden = false;
  preview.alt = `Preview of ${file.name}`;
  preview.src = previewUrl;
  $("result-title").textContent = file.name;
  $("predictions").replaceChildren();
  $("latency").textContent = "";
  $("result").hidden = false;
}

function showPredictions(answer, roundTripMs) {
  const items = answer.predictions[0].map(({ label, score }) => {
    const percent = score < 0.0005 ? "< 0.1 %" : `${(score * 100).toFixed(1)} %`;
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(score * 100, 0.5)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = percent;
    item.append(name, bar, value);
    return item;
  });
  $("predictions").replaceChildren(...items);
  const t = answer.timings_ms;
  $("latency").textContent =
    `${answer.model} version ${answer.version} on ${answer.provider}: ` +
    `server ${t.total.toFixed(1)} ms ` +
    `(decode ${t.decode.toFixed(1)}, queue ${t.queue.toFixed(1)}, ` +
    `inference ${t.inference.toFixed(1)}), round trip ${roundTripMs.toFixed(0)} ms`;
  $("status").textContent = `Top class: ${answer.predictions[0][0].label}.`;
}

async function classify(file) {
  showError("");
  showPreview(file);
  if (!model) {
    showError("No model is loaded on this server.");
    return;
  }
  if (file.size > model.max_body_bytes) {
    showError(
      `That image is too large for this server: ${file.size} bytes, ` +
        `the limit is ${model.max_body_bytes}.`,
    );
    return;
  }
  $("status").textContent = `Classifying ${file.name}…`;
  const topK = Math.max(1, Number.parseInt($("top-k").value, 10) || 1);
  const started = performance.now();
  try {
    const path = `/v1/models/${encodeURIComponent(model.name)}/classify`;
    const answer = await api(`${path}?top_k=${topK}`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    showPredictions(answer, performance.now() - started);
  } catch (error) {
    showError(error.message);
  }
}

function setUp() {
  const input = $("file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => input.files[0] && classify(input.files[0]));
  // A file dropped anywhere is taken, so a near miss does not navigate away from the page.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });
  $("preview").addEventListener("load", () => {
    $("preview").classList.toggle("small", $("preview").naturalWidth < 128);
  });
  $("preview").addEventListener("error", () => {
    // Not something the browser can show: no broken-image icon, and no empty result box.
    $("preview").hidden = true;
    $("result").hidden = !$("predictions").children.length;
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", () => chooseModel($("model").value));
  loadModels();
}

setUp();
