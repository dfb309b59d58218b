// protloc web page: plain JavaScript, no build step, no network beyond this service.
"use strict";

const CHANNEL_INFO = {
  red: { role: "microtubules", colour: "#ff4d4d" },
  green: { role: "protein of interest", colour: "#37d66a" },
  blue: { role: "nucleus", colour: "#3b7bff" },
  yellow: { role: "endoplasmic reticulum", colour: "#e2e552" },
};
const CHANNEL_FILE = /^(.*?)[_\-. ]?(red|green|blue|yellow)\.(png|tiff?|jpe?g|npy)$/i;
const STACK_FILE = /\.(tiff?|npy)$/i;
const TOKEN_KEY = "protloc-token";

const state = {
  model: null,
  files: {},          // channel -> File
  stack: null,        // File
  result: null,       // the last /predict answer
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  request: 0,         // increases with every request, so a late answer never overwrites a newer one
  overlayUrl: null,
  cell: null,         // the selected cell's id
};
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") {
      node.setAttribute(key, value === true ? "" : value);
    } else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// ---------------------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError("the service cannot be reached; is `protloc serve` still running?", 0);
  }
  if (response.ok) return response;
  let detail = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") detail = body.detail;
  } catch (error) {
    /* not JSON: keep the status text */
  }
  if (response.status === 401) showTokenBar();
  throw new ApiError(detail, response.status);
}

function setStatus(message, kind = "") {
  const status = $("status");
  status.textContent = message;
  status.className = `status ${kind}`.trim();
}

function showTokenBar() {
  $("token-bar").hidden = false;
  $("token-input").focus();
}

// ---------------------------------------------------------------------------------------------- model

async function loadModel() {
  try {
    const response = await api("/model");
    state.model = await response.json();
  } catch (error) {
    $("model-info").textContent = error.status === 401 ? "Token needed" : `Model unavailable: ${error.message}`;
    return;
  }
  $("token-bar").hidden = true;
  const model = state.model;
  const info = $("model-info");
  info.replaceChildren(
    el("span", { class: "pill", text: model.name }),
    el("span", { class: "pill", text: `${model.size} px input` }),
    el("span", { class: "pill", text: model.channels.join(" · ") }),
    el("span", { class: "pill", text: `${model.backend === "onnx" ? "ONNX Runtime" : "PyTorch"}` }),
    el("span", { class: "pill", text: `protloc ${model.service_version}` }),
  );
  const macro = model.metrics && model.metrics.validation && model.metrics.validation.macro_f1;
  if (typeof macro === "number") info.append(el("span", { class: "pill", text: `val. macro F1 ${macro.toFixed(2)}` }));
  const select = $("explain-class");
  select.replaceChildren(...model.classes.map((c) => el("option", { value: String(c.id), text: `${c.id} · ${c.name}` })));
  if (!model.explanations) {
    $("explain-form").hidden = true;
    $("explain-hint").textContent =
      "Class activation maps need PyTorch and the package's weights, which this service does not have.";
  }
  setupCells(model);
  renderSlots();
}

// ---------------------------------------------------------------------------------------------- files

function classify(file) {
  const match = CHANNEL_FILE.exec(file.name);
  if (match) return { kind: "channel", channel: match[2].toLowerCase(), id: match[1] || "" };
  if (STACK_FILE.test(file.name)) return { kind: "stack", id: file.name.replace(/\.[^.]+$/, "") };
  return { kind: "unknown" };
}

function addFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  const ignored = [];
  const ids = new Set();
  for (const file of files) {
    const found = classify(file);
    if (found.kind === "channel") {
      if (state.stack) state.stack = null;
      state.files[found.channel] = file;
      ids.add(found.id);
    } else if (found.kind === "stack" && files.length === 1) {
      state.stack = file;
      state.files = {};
    } else {
      ignored.push(file.name);
    }
  }
  const notes = [];
  if (ignored.length) {
    notes.push(`Ignored ${ignored.join(", ")}: name channel images like ID_red.png, or drop one stacked .tif/.npy alone.`);
  }
  if (ids.size > 1) notes.push("Files of several samples were given; one sample is predicted at a time here.");
  setStatus(notes.join(" "), notes.length ? "error" : "");
  renderSlots();
  if (isReady()) predict();
}

function neededChannels() {
  return state.model ? state.model.channels : Object.keys(CHANNEL_INFO);
}

function isReady() {
  return Boolean(state.model) && (Boolean(state.stack) || neededChannels().every((c) => state.files[c]));
}

function renderSlots() {
  const slots = $("slots");
  const items = neededChannels().map((channel) => {
    const file = state.files[channel];
    const input = el("input", {
      type: "file",
      class: "visually-hidden",
      id: `pick-${channel}`,
      accept: ".png,.tif,.tiff,.jpg,.jpeg,image/png,image/tiff,image/jpeg",
    });
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) {
        state.stack = null;
        state.files[channel] = input.files[0];
        renderSlots();
        setStatus("");
        if (isReady()) predict();
      }
    });
    return el(
      "li",
      { class: `slot${file ? " filled" : ""}`, "data-channel": channel },
      el("span", { class: "dot", style: `background:${CHANNEL_INFO[channel].colour}` }),
      el("span", { class: "name", text: channel }),
      el("span", { class: "role", text: CHANNEL_INFO[channel].role }),
      el("span", { class: "file", text: file ? file.name : "no file", title: file ? file.name : "" }),
      input,
      el("label", { class: "button small", for: `pick-${channel}`, text: file ? "Change" : "Choose", "aria-label": `Choose the ${channel} channel file` }),
    );
  });
  if (state.stack) {
    items.unshift(
      el("li", { class: "slot stack filled" },
        el("span", { class: "name", text: "Stacked file" }),
        el("span", { class: "file", text: state.stack.name, title: state.stack.name })),
    );
  }
  slots.replaceChildren(...items);
  const ready = isReady();
  $("predict-button").disabled = !ready;
  $("clear-button").disabled = !state.stack && Object.keys(state.files).length === 0;
  const missing = neededChannels().filter((c) => !state.files[c]);
  $("ready-hint").textContent = ready || !state.model ? "" : `Missing: ${missing.join(", ")}`;
}

function clearAll() {
  state.files = {};
  state.stack = null;
  state.result = null;
  state.request += 1;
  $("file-input").value = "";
  $("viewer").hidden = true;
  $("result").hidden = true;
  $("result").removeAttribute("data-state");
  $("result-empty").hidden = false;
  renderCells(null);
  setStatus("");
  renderSlots();
}

function sampleForm() {
  const form = new FormData();
  if (state.stack) form.append("stack", state.stack, state.stack.name);
  else for (const channel of neededChannels()) form.append(channel, state.files[channel], state.files[channel].name);
  return form;
}

// ---------------------------------------------------------------------------------------------- predict

async function predict() {
  if (!isReady()) return;
  const request = ++state.request;
  $("predict-button").disabled = true;
  $("result").setAttribute("data-state", "loading");
  setStatus("Predicting…", "busy");
  const started = performance.now();
  try {
    const response = await api(predictPath(), { method: "POST", body: sampleForm() });
    const result = await response.json();
    if (request !== state.request) return;
    state.result = result;
    renderImages(result);
    renderResult(result, performance.now() - started);
    renderCells(result);
    setStatus("");
    if (state.model.explanations && result.labels.length) {
      $("explain-class").value = String(result.labels[0].id);
      explain();
    }
  } catch (error) {
    if (request !== state.request) return;
    $("result").setAttribute("data-state", "error");
    setStatus(error.message, "error");
  } finally {
    $("predict-button").disabled = !isReady();
  }
}

function renderImages(result) {
  const previews = result.previews;
  if (!previews) return;
  $("viewer").hidden = false;
  $("composite").src = previews.composite;
  const channels = Object.entries(previews.channels).map(([channel, url]) =>
    el("figure", { class: "panel" },
      el("img", { src: url, alt: `${channel} channel (${CHANNEL_INFO[channel].role})` }),
      el("figcaption", {}, channel, " ", el("span", { class: "muted", text: CHANNEL_INFO[channel].role }))),
  );
  $("channel-images").replaceChildren(...channels);
  $("overlay-panel").hidden = true;
  applyBrightness();
}

function percent(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0)}%`;
}

function renderResult(result, elapsed) {
  $("result-empty").hidden = true;
  $("result").hidden = false;
  const labels = result.labels.map((label) =>
    el("li", { "data-class-id": String(label.id), title: `threshold ${label.threshold.toFixed(2)}` },
      el("span", { class: "n", text: label.name }),
      el("span", { class: "p", text: percent(label.probability) })),
  );
  $("labels").replaceChildren(...labels);
  const image = result.image;
  $("result-meta").textContent =
    `${image.width}×${image.height} px field (${image.source === "stack" ? "stacked file" : "channel files"}) · ` +
    `service ${(1000 * result.seconds).toFixed(0)} ms (decode ${(1000 * result.timing.decode).toFixed(0)} ms, ` +
    `model ${(1000 * result.timing.inference).toFixed(0)} ms) · round trip ${elapsed.toFixed(0)} ms · ` +
    `target "${result.target}"`;
  renderChart();
  $("result").setAttribute("data-state", "done");
}

function renderChart() {
  const result = state.result;
  if (!result || !state.model) return;
  const predicted = new Set(result.labels.map((l) => l.id));
  const rows = state.model.classes.map((c) => ({ ...c, probability: result.probabilities[c.id] }));
  if ($("sort-toggle").checked) rows.sort((a, b) => b.probability - a.probability || a.id - b.id);
  const items = rows.map((row) => {
    const on = predicted.has(row.id);
    const description = `${row.name}: ${percent(row.probability)}, threshold ${percent(row.threshold)}${on ? ", predicted" : ""}`;
    return el("li", { class: `bar-row${on ? " predicted" : ""}`, "data-class-id": String(row.id), "aria-label": description },
      el("span", { class: "bar-name", title: row.name }, el("span", { class: "cid", text: String(row.id) }), row.name),
      el("span", { class: "bar-track", "aria-hidden": "true" },
        el("span", { class: "bar-fill", style: `width:${(100 * row.probability).toFixed(2)}%` }),
        el("span", { class: "bar-tick", style: `left:${(100 * row.threshold).toFixed(2)}%`, title: `threshold ${row.threshold.toFixed(2)}` })),
      el("span", { class: "bar-value", "aria-hidden": "true", text: percent(row.probability) }),
    );
  });
  $("chart").replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------- explain

async function explain() {
  if (!state.result || !isReady()) return;
  const classId = $("explain-class").value;
  const request = state.request;
  const button = $("explain-button");
  button.disabled = true;
  setStatus("Computing the class activation map…", "busy");
  try {
    const response = await api(`/explain?class_id=${encodeURIComponent(classId)}&max_side=768`, {
      method: "POST",
      body: sampleForm(),
    });
    const blob = await response.blob();
    if (request !== state.request) return;
    if (state.overlayUrl) URL.revokeObjectURL(state.overlayUrl);
    state.overlayUrl = URL.createObjectURL(blob);
    const name = response.headers.get("X-Class-Name") || "";
    const probability = Number(response.headers.get("X-Probability"));
    const overlay = $("overlay");
    overlay.src = state.overlayUrl;
    overlay.alt = `Class activation map for ${name} over the composite`;
    overlay.setAttribute("data-class-id", response.headers.get("X-Class-Id") || classId);
    $("overlay-caption").replaceChildren(
      `Class activation: ${name} `,
      el("span", { class: "muted", text: `p = ${percent(probability)} · red = strongest evidence` }),
    );
    $("overlay-panel").hidden = false;
    setStatus("");
  } catch (error) {
    if (request !== state.request) return;
    setStatus(`Explanation: ${error.message}`, "error");
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------- cells

const METHOD_NAMES = {
  auto: "automatic",
  cell: "cell model alone",
  baseline: "field baseline",
  mix: "cell + field mix",
  fusion: "fitted fusion",
};

function setupCells(model) {
  const cells = model.cells;
  $("cells-controls").hidden = !cells;
  if (!cells) return;
  const names = {
    ...METHOD_NAMES,
    auto: `automatic (${cells.default_fusion})`,
    mix: `cell + field mix (${cells.mix})`,
    fusion: `fitted fusion (${cells.default_fusion})`,
  };
  $("cell-method").replaceChildren(...cells.methods.map((m) => el("option", { value: m, text: names[m] || m })));
  $("cell-method").disabled = !$("cells-toggle").checked;
}

function predictPath() {
  let path = "/predict?previews=true";
  if (state.model && state.model.cells && $("cells-toggle").checked) {
    path += `&cells=true&cell_method=${encodeURIComponent($("cell-method").value || "auto")}`;
  }
  return path;
}

function className(id) {
  const known = state.model && state.model.classes.find((c) => c.id === id);
  return known ? known.name : `class ${id}`;
}

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function cellDescription(cell) {
  const top = cell.labels.length ? cell.labels.map((l) => `${l.name} ${percent(l.probability)}`).join(", ") : "no label";
  return `Cell ${cell.cell}: ${top}${cell.border ? " (touches the edge)" : ""}`;
}

function renderCells(result) {
  const layer = $("cell-layer");
  state.cell = null;
  $("cell-panel").hidden = true;
  if (!result || !result.cells || !result.cell_info) {
    layer.toggleAttribute("hidden", true); // an SVG element has no .hidden property
    layer.replaceChildren();
    $("cells-box").hidden = true;
    return;
  }
  const info = result.cell_info;
  layer.setAttribute("viewBox", `0 0 ${result.image.width} ${result.image.height}`);
  layer.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const shapes = result.cells.map((cell) => {
    const colour = info.palette[cell.top] || "#ffffff";
    const shape = svg("polygon", {
      class: "cell-outline",
      points: cell.outline.map(([x, y]) => `${x},${y}`).join(" "),
      fill: colour,
      stroke: colour,
      tabindex: 0,
      role: "button",
      "aria-pressed": "false",
      "aria-label": cellDescription(cell),
      "data-cell": cell.cell,
      "data-top": cell.top,
    });
    const title = svg("title");
    title.textContent = cellDescription(cell);
    shape.append(title);
    shape.addEventListener("click", () => selectCell(cell.cell));
    shape.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        selectCell(cell.cell);
      }
    });
    return shape;
  });
  layer.replaceChildren(...shapes);
  layer.toggleAttribute("hidden", false);
  const count = result.cells.length;
  const edge = result.cells.filter((c) => c.border).length;
  $("cells-summary").textContent = count
    ? `${count} cell${count === 1 ? "" : "s"} (${edge} touching the edge) · ${info.method} · ` +
      "click a cell outline (or Tab to it and press Enter) to see its probabilities"
    : `No cells found in this field (${info.segmenter.segmenter} segmenter).`;
  const tops = [...new Set(result.cells.map((c) => c.top))].sort((a, b) => a - b);
  $("cell-legend").replaceChildren(...tops.map((id) =>
    el("li", { "data-class-id": String(id) },
      el("span", { class: "swatch", style: `background:${info.palette[id]}` }), className(id))));
  $("cells-box").hidden = false;
}

function selectCell(id) {
  const result = state.result;
  if (!result || !result.cells) return;
  const cell = result.cells.find((c) => c.cell === id);
  if (!cell) return;
  state.cell = id;
  for (const shape of $("cell-layer").querySelectorAll("[data-cell]")) {
    shape.setAttribute("aria-pressed", shape.dataset.cell === String(id) ? "true" : "false");
  }
  const info = result.cell_info;
  $("cell-title").textContent = `Cell ${cell.cell}`;
  $("cell-meta").textContent =
    `${cell.area} px · centre (${cell.centroid[1].toFixed(0)}, ${cell.centroid[0].toFixed(0)}) · ` +
    `${cell.border ? "touches the field's edge · " : ""}${info.method}`;
  $("cell-labels").replaceChildren(...(cell.labels.length ? cell.labels.map((label) =>
    el("li", { "data-class-id": String(label.id) },
      el("span", { class: "n", text: label.name }),
      el("span", { class: "p", text: percent(label.probability) }))) : [el("li", { class: "none", text: "no label" })]));
  const predicted = new Set(cell.labels.map((l) => l.id));
  const rows = state.model.classes
    .map((c) => ({ id: c.id, name: c.name, probability: cell.probabilities[c.id], threshold: info.thresholds[c.id] }))
    .sort((a, b) => b.probability - a.probability || a.id - b.id);
  $("cell-chart").replaceChildren(...rows.map((row) => {
    const on = predicted.has(row.id);
    return el("li", {
      class: `bar-row${on ? " predicted" : ""}`,
      "data-class-id": String(row.id),
      "data-probability": String(row.probability),
      "aria-label": `${row.name}: ${percent(row.probability)}, threshold ${percent(row.threshold)}${on ? ", predicted" : ""}`,
    },
      el("span", { class: "bar-name", title: row.name }, el("span", { class: "cid", text: String(row.id) }), row.name),
      el("span", { class: "bar-track", "aria-hidden": "true" },
        el("span", { class: "bar-fill", style: `width:${(100 * row.probability).toFixed(2)}%` }),
        el("span", { class: "bar-tick", style: `left:${(100 * row.threshold).toFixed(2)}%` })),
      el("span", { class: "bar-value", "aria-hidden": "true", text: percent(row.probability) }));
  }));
  $("cell-panel").hidden = false;
}

// ---------------------------------------------------------------------------------------------- wiring

function applyBrightness() {
  const value = Number($("brightness").value);
  $("brightness-value").textContent = `${value}×`;
  for (const image of document.querySelectorAll("#viewer img")) {
    image.style.filter = value === 1 ? "" : `brightness(${value})`;
  }
}

function wire() {
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => addFiles(input.files));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.remove("over");
    });
  }
  zone.addEventListener("drop", (event) => addFiles(event.dataTransfer && event.dataTransfer.files));
  // A file dropped beside the zone must not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("predict-button").addEventListener("click", predict);
  $("clear-button").addEventListener("click", clearAll);
  $("sort-toggle").addEventListener("change", renderChart);
  $("brightness").addEventListener("input", applyBrightness);
  $("cells-toggle").addEventListener("change", () => {
    $("cell-method").disabled = !$("cells-toggle").checked;
    if (isReady()) predict();
  });
  $("cell-method").addEventListener("change", () => {
    if (isReady()) predict();
  });
  $("explain-form").addEventListener("submit", (event) => {
    event.preventDefault();
    explain();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    loadModel();
  });
  renderSlots();
  loadModel();
}

document.addEventListener("DOMContentLoaded", wire);
