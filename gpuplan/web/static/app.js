// gpuplan's page: a form whose state lives in the URL, the same JSON API as scripts use, and charts drawn
// as inline SVG. No framework and no build step: this file is served as it is.
"use strict";

// (field, label, colour) as gpuplan/sweep.py COMPONENTS: the Okabe & Ito colour-blind-safe palette.
const COMPONENTS = [
  ["weights_bytes", "weights", "#0072B2"],
  ["kv_cache_bytes", "KV cache", "#E69F00"],
  ["activation_bytes", "activations", "#009E73"],
  ["overhead_bytes", "overhead", "#999999"],
];
const LINE_COLOURS = ["#D55E00", "#CC79A7", "#000000", "#56B4E9", "#F0E442"];
// The cards the sweep chart draws when the form names none: the README's examples' GPUs.
const SWEEP_DEFAULT_GPUS = ["L4", "A100-80GB", "H100"];
const PLAN_ROWS = 15;  // as `gpuplan plan --top`'s default
const BASE_FIELDS = ["model", "engine", "dtype", "kv_dtype", "batch", "seq", "new_tokens", "gpu",
                     "tensor_parallel", "pipeline_parallel"];
const GIB = 1n << 30n;

const $ = (id) => document.getElementById(id);
const form = () => $("form");
let engineOptions = [];
let defaultEngine = "";
let memoryFractionOptions = {};
let generation = 0;

// ---- formatting, as gpuplan/cli/output.py prints ----

function withCommas(text) {
  return text.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function fmtInt(n) {
  const sign = n < 0 ? "-" : "";
  return sign + withCommas(String(Math.abs(Math.round(n))));
}

// bytes / 2^30 to two places, rounded half to even on the exact value as Python's format() does.
function fmtGib(bytes) {
  let b = BigInt(Math.round(bytes));
  const negative = b < 0n;
  if (negative) b = -b;
  const scaled = b * 100n;
  let cents = scaled / GIB;
  const twice = 2n * (scaled % GIB);
  if (twice > GIB || (twice === GIB && cents % 2n === 1n)) cents += 1n;
  const whole = withCommas((cents / 100n).toString());
  const frac = (cents % 100n).toString().padStart(2, "0");
  return (negative ? "-" : "") + whole + "." + frac;
}

function humanParams(n) {
  for (const [unit, div] of [["T", 1e12], ["B", 1e9], ["M", 1e6]]) {
    if (n >= div) return (n / div).toFixed(2) + unit;
  }
  return fmtInt(n);
}

function tokenLabel(n) {
  for (const [div, suffix] of [[1024 * 1024, "m"], [1024, "k"]]) {
    if (n >= div && n % div === 0) return (n / div) + suffix;
  }
  return fmtInt(n);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// A colour key; set through the CSSOM, which the page's Content-Security-Policy allows (style="" it refuses).
function swatch(colour) {
  const node = el("span", {class: "swatch"});
  node.style.background = colour;
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- the API ----

async function api(path, params) {
  const response = await fetch(path + "?" + new URLSearchParams(params), {headers: {Accept: "application/json"}});
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw {message: `the server answered ${response.status} without JSON`};
  }
  if (!response.ok) throw body.error || {message: `the server answered ${response.status}`};
  return body;
}

// ---- the form and the URL ----

// An option's JSON schema (from its engine's Options class) decides its input: yes/no, a list of choices,
// or text that the server validates.
function schemaTypes(schema) {
  const parts = schema.anyOf || [schema];
  return {types: parts.map((p) => p.type), choices: parts.flatMap((p) => p.enum || (p.const !== undefined ? [p.const] : []))};
}

function optionField(option) {
  const name = option.name;
  const {types, choices} = schemaTypes(option.schema);
  const shownDefault = option.default === null ? "auto" : String(option.default);
  let input;
  if (types.includes("boolean")) {
    input = el("select", {name}, el("option", {value: ""}, `default (${shownDefault})`),
               el("option", {value: "true"}, "true"), el("option", {value: "false"}, "false"));
  } else if (choices.length && !types.includes("integer") && !types.includes("number")) {
    input = el("select", {name}, el("option", {value: ""}, `default (${shownDefault})`),
               ...choices.map((c) => el("option", {value: c}, c)));
  } else {
    input = el("input", {name, placeholder: option.default === null ? "" : String(option.default)});
  }
  return el("label", {"data-engines": option.engines.join(" "), title: option.description}, name, input);
}

function buildForm(info) {
  const engine = form().elements.engine;
  for (const name of info.engines) engine.append(el("option", {value: name}, name));
  for (const [field, values] of [["dtype", info.dtypes], ["kv_dtype", info.kv_dtypes]]) {
    for (const value of values) form().elements[field].append(el("option", {value}, value));
  }
  engineOptions = info.options;
  defaultEngine = info.default_engine;
  memoryFractionOptions = info.memory_fraction_options;
  const box = $("engine-options");
  for (const option of engineOptions) box.append(optionField(option));
}

function currentEngine() {
  return form().elements.engine.value || defaultEngine;
}

function showEngineOptions() {
  const engine = currentEngine();
  let shown = 0;
  for (const label of $("engine-options").querySelectorAll("label[data-engines]")) {
    const applies = label.dataset.engines.split(" ").includes(engine);
    label.hidden = !applies;
    if (!applies) label.querySelector("input, select").value = "";
    shown += applies ? 1 : 0;
  }
  $("engine-options-empty").hidden = shown > 0;
}

function formState() {
  const state = {};
  const names = BASE_FIELDS.concat(engineOptions.map((o) => o.name));
  for (const name of names) {
    const field = form().elements[name];
    const value = field ? field.value.trim() : "";
    if (value !== "") state[name] = value;
  }
  return state;
}

function applyState(params) {
  for (const [name, value] of params) {
    const field = form().elements[name];
    if (!field) continue;
    if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
      field.append(el("option", {value}, value));  // a value the API will judge, shown as given
    }
    field.value = value;
  }
}

function linkFor(state) {
  const query = new URLSearchParams(state).toString();
  return location.origin + location.pathname + (query ? "?" + query : "");
}

// ---- rendering ----

function showError(error) {
  $("error").hidden = false;
  $("error-message").textContent = error.message || String(error);
  $("error-hint").textContent = error.hint ? "hint: " + error.hint : "";
  for (const id of ["estimate", "plan", "sweep"]) $(id).hidden = true;
}

function workloadLine(r) {
  if (r.llamacpp) {
    const run = r.llamacpp;
    const seqs = run.n_seq > 1 ? `${run.n_seq} sequences of ${fmtInt(run.n_ctx_seq)}` : "1 sequence";
    return `${r.dtype} weights · ${r.kv_dtype} KV cache · ctx-size ${fmtInt(run.n_ctx)} (${seqs}) · ` +
           `${run.layers_on_gpu}/${run.layers} layers${run.output_on_gpu ? " + output layer" : ""} on the GPU`;
  }
  if (r.serving) {
    return `${r.dtype} weights · ${r.kv_dtype} KV cache · max_model_len ${fmtInt(r.seq)} · ${r.gpus} GPU(s)`;
  }
  return `${r.dtype} weights · ${r.kv_dtype} KV cache · batch ${r.batch} x seq ${fmtInt(r.seq)} ` +
         `(${fmtInt(r.prompt_tokens)} prompt + ${fmtInt(r.new_tokens)} generated)`;
}

function renderBreakdown(r) {
  const body = $("breakdown").querySelector("tbody");
  body.replaceChildren();
  const total = r.total_bytes || 1;
  body.append(el("tr", {}, el("td", {}, "parameters"), el("td"), el("td", {}, fmtInt(r.parameters)),
                 el("td", {}, humanParams(r.parameters))));
  const llamacpp = Boolean(r.llamacpp);
  const labels = {activation_bytes: llamacpp ? "compute buffer" : "activations",
                  overhead_bytes: llamacpp ? "CUDA runtime" : "overhead"};
  for (const [field, label, colour] of COMPONENTS) {
    const value = r[field];
    body.append(el("tr", {"data-field": field},
                   el("td", {}, swatch(colour), labels[field] || label),
                   el("td", {}, fmtGib(value)), el("td", {}, fmtInt(value)),
                   el("td", {}, (100 * value / total).toFixed(1) + "%")));
  }
  body.append(el("tr", {class: "peak"}, el("td", {}, "peak allocated"), el("td", {}, fmtGib(r.peak_allocated_bytes)),
                 el("td", {}, fmtInt(r.peak_allocated_bytes)), el("td")));
  body.append(el("tr", {class: "total"}, el("td", {}, "total"), el("td", {id: "total-gib"}, fmtGib(r.total_bytes)),
                 el("td", {id: "total-bytes"}, fmtInt(r.total_bytes)), el("td", {}, "100.0%")));
}

function renderFit(r) {
  const fit = $("fit");
  fit.replaceChildren();
  if (r.fits === null || r.gpu_memory_bytes === null) return;
  const where = r.gpus > 1 ? `${r.gpus} x ${r.gpu}` : r.gpu;
  fit.append(`${where}: `, el("span", {class: r.fits ? "fits" : "nofit"}, r.fits ? "fits" : "does not fit"),
             ` — ${fmtGib(r.total_bytes)} of ${fmtGib(r.gpu_memory_bytes)} GiB per GPU, headroom ` +
             `${fmtGib(r.headroom_bytes || 0)} GiB`);
}

// One bar per GPU: the components stacked, against the card's memory when a card was named.
function renderBar(r) {
  const width = 640, left = 8, barTop = 22, barHeight = 34;
  const capacity = r.gpu_memory_bytes;
  const scale = Math.max(r.total_bytes, capacity || 0) || 1;
  const span = width - 2 * left;
  const chart = svg("svg", {viewBox: `0 0 ${width} 96`, role: "img",
                            "aria-label": `memory per GPU: ${fmtGib(r.total_bytes)} GiB`});
  if (capacity) {  // the card's memory as the track the components fill
    const track = svg("rect", {x: left, y: barTop, width: capacity / scale * span, height: barHeight, fill: "#eceef2",
                               stroke: "#c5cad3"});
    track.append(svg("title", {}, `${r.gpu}: ${fmtGib(capacity)} GiB per GPU`));
    chart.append(track);
  }
  let x = left;
  for (const [field, label, colour] of COMPONENTS) {
    const w = r[field] / scale * span;
    const rect = svg("rect", {x, y: barTop, width: Math.max(w, 0), height: barHeight, fill: colour});
    rect.append(svg("title", {}, `${label}: ${fmtGib(r[field])} GiB`));
    chart.append(rect);
    x += w;
  }
  chart.append(svg("text", {x: left, y: 14}, `${fmtGib(r.total_bytes)} GiB per GPU`));
  if (capacity) {
    const cx = left + capacity / scale * span;
    chart.append(svg("line", {x1: cx, x2: cx, y1: barTop - 6, y2: barTop + barHeight + 6, stroke: "#D55E00",
                              "stroke-width": 2, "stroke-dasharray": "5 3"}));
    const anchor = cx > width / 2 ? "end" : "start";
    chart.append(svg("text", {x: cx + (anchor === "end" ? -4 : 4), y: 14, "text-anchor": anchor, fill: "#D55E00"},
                     `${r.gpu}: ${fmtGib(capacity)} GiB`));
  }
  let lx = left;
  for (const [, label, colour] of COMPONENTS) {
    chart.append(svg("rect", {x: lx, y: 76, width: 10, height: 10, fill: colour}));
    chart.append(svg("text", {x: lx + 14, y: 85}, label));
    lx += 14 + label.length * 6.5 + 16;
  }
  $("bar").replaceChildren(chart);
}

function renderMessages(r) {
  const serving = $("serving");
  serving.replaceChildren();
  if (r.serving) {
    const s = r.serving;
    const label = memoryFractionOptions[s.engine];
    serving.append(el("li", {}, `${s.engine} on ${r.gpu} (${label} ${s.memory_fraction}, TP ${r.tensor_parallel}, ` +
      `PP ${r.pipeline_parallel}): KV cache ${fmtInt(s.kv_cache_tokens)} tokens, ${s.max_concurrency.toFixed(2)}x ` +
      `requests of ${fmtInt(s.max_model_len)} tokens; longest context that fits ${fmtInt(s.max_model_len_that_fits)}`));
  }
  const list = $("messages");
  list.replaceChildren();
  for (const w of r.warnings || []) list.append(el("li", {class: "warning"}, "Warning: " + w));
  for (const n of r.notes || []) list.append(el("li", {class: "note"}, "Note: " + n));
}

function renderEstimate(r) {
  $("error").hidden = true;
  $("estimate").hidden = false;
  $("headline").textContent = `${r.model} (${r.model_type}, ${r.attention}, ${humanParams(r.parameters)} parameters)`;
  $("workload").textContent = workloadLine(r);
  renderBreakdown(r);
  renderFit(r);
  renderBar(r);
  renderMessages(r);
}

function renderPlan(p) {
  const body = $("plan-table").querySelector("tbody");
  body.replaceChildren();
  for (const o of p.options.slice(0, PLAN_ROWS)) {
    const g = (n) => (n / 2 ** 30).toFixed(1);
    body.append(el("tr", {}, el("td", {}, o.gpu), el("td", {}, String(o.count)),
                   el("td", {}, `${o.tensor_parallel}x${o.pipeline_parallel}`), el("td", {}, g(o.weights_bytes)),
                   el("td", {}, g(o.kv_cache_bytes)), el("td", {}, `${g(o.total_bytes)}/${g(o.gpu_memory_bytes)}`),
                   el("td", {}, o.kv_cache_tokens === null ? "" : fmtInt(o.kv_cache_tokens)),
                   el("td", {class: o.fits ? "fits" : "nofit"}, o.fits ? "yes" : "no")));
  }
  $("plan-line").textContent = `${p.engine} · ${p.dtype} weights, ${p.kv_dtype} KV cache · ${p.batch} x ` +
    `${fmtInt(p.seq)}-token request(s) · GiB per GPU, best first` +
    (p.options.length > PLAN_ROWS ? ` (${PLAN_ROWS} of ${p.options.length} GPU types)` : "");
  const b = p.best;
  $("plan-best").textContent = b ? `Best: ${b.count} x ${b.gpu} (TP ${b.tensor_parallel} x PP ${b.pipeline_parallel}, ` +
    `${b.nodes} node${b.nodes > 1 ? "s" : ""}).` : "It fits no GPU type tried.";
  $("plan").hidden = false;
}

// Stacked columns per context length, a dashed line at each GPU's memory.
function renderSweep(s) {
  const serving = s.points.some((p) => p.max_concurrency !== null);  // a serving engine's budget per GPU
  const firstGpu = s.gpus.length ? s.gpus[0].name : null;
  const seen = new Map();
  for (const p of s.points) {
    if (serving && p.gpu !== firstGpu) continue;
    if (!seen.has(p.seq)) seen.set(p.seq, p);
  }
  const points = [...seen.values()];
  const gpus = serving ? s.gpus.slice(0, 1) : s.gpus;
  const width = 640, height = 300, left = 56, right = 12, top = 14, bottom = 56;
  const maxBytes = Math.max(1, ...points.map((p) => p.total_bytes), ...gpus.map((g) => g.memory_bytes));
  const plotW = width - left - right, plotH = height - top - bottom;
  const y = (bytes) => top + plotH - bytes / maxBytes * plotH;
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "memory against context length"});
  const step = Math.max(1, Math.ceil(maxBytes / 2 ** 30 / 6 / 10) * 10);
  for (let g = 0; g * 2 ** 30 <= maxBytes; g += step) {
    chart.append(svg("line", {x1: left, x2: width - right, y1: y(g * 2 ** 30), y2: y(g * 2 ** 30), stroke: "#e3e6eb"}));
    chart.append(svg("text", {x: left - 6, y: y(g * 2 ** 30) + 4, "text-anchor": "end"}, String(g)));
  }
  chart.append(svg("text", {x: 12, y: top + plotH / 2, transform: `rotate(-90 12 ${top + plotH / 2})`,
                            "text-anchor": "middle"}, "GiB per GPU"));
  const slot = plotW / Math.max(points.length, 1);
  points.forEach((p, i) => {
    const x = left + i * slot + slot * 0.15;
    let base = 0;
    for (const [field, label, colour] of COMPONENTS) {
      const rect = svg("rect", {x, y: y(base + p[field]), width: slot * 0.7, height: p[field] / maxBytes * plotH,
                                fill: colour});
      rect.append(svg("title", {}, `${tokenLabel(p.seq)}: ${label} ${fmtGib(p[field])} GiB`));
      chart.append(rect);
      base += p[field];
    }
    chart.append(svg("text", {x: x + slot * 0.35, y: top + plotH + 16, "text-anchor": "middle"}, tokenLabel(p.seq)));
    if (serving && p.max_concurrency !== null) {
      chart.append(svg("text", {x: x + slot * 0.35, y: y(p.total_bytes) - 4, "text-anchor": "middle"},
                       p.max_concurrency.toFixed(1) + "x"));
    }
  });
  gpus.forEach((g, i) => {
    const colour = LINE_COLOURS[i % LINE_COLOURS.length];
    chart.append(svg("line", {x1: left, x2: width - right, y1: y(g.memory_bytes), y2: y(g.memory_bytes),
                              stroke: colour, "stroke-width": 2, "stroke-dasharray": "6 4"}));
    chart.append(svg("text", {x: width - right - 4, y: y(g.memory_bytes) - 4, "text-anchor": "end", fill: colour},
                     `${g.name} ${fmtGib(g.memory_bytes)} GiB`));
  });
  chart.append(svg("text", {x: left + plotW / 2, y: height - 22, "text-anchor": "middle"},
                   serving ? `max_model_len (${s.engine} on ${firstGpu}; labels: requests that fit)`
                           : `context length (tokens per sequence, batch ${s.batches[0]})`));
  let lx = left;
  for (const [, label, colour] of COMPONENTS) {
    chart.append(svg("rect", {x: lx, y: height - 12, width: 10, height: 10, fill: colour}));
    chart.append(svg("text", {x: lx + 14, y: height - 3}, label));
    lx += 14 + label.length * 6.5 + 16;
  }
  $("sweep-chart").replaceChildren(chart);
  $("sweep").hidden = false;
}

// ---- updating ----

function pick(state, names) {
  const out = {};
  for (const name of names) if (state[name] !== undefined) out[name] = state[name];
  return out;
}

// The plan and the sweep take the estimate's engine and its options (the same names in every endpoint); the
// sweep leaves out the options that set the context length (max_model_len, ctx_size): its axis varies that.
function engineParams(state, {withContextLength = true} = {}) {
  return pick(state, engineOptions.filter((o) => withContextLength || !o.context_length).map((o) => o.name));
}

async function updatePlan(state, estimate) {
  const params = {...pick(state, ["model", "dtype", "kv_dtype", "batch"]), ...engineParams(state),
                  engine: estimate.engine, seq: estimate.seq};
  renderPlan(await api("/api/plan", params));
}

async function updateSweep(state) {
  const params = {...pick(state, ["model", "dtype", "kv_dtype", "batch", "engine", "tensor_parallel", "pipeline_parallel",
                                   "new_tokens"]), ...engineParams(state, {withContextLength: false})};
  params.gpu = state.gpu || SWEEP_DEFAULT_GPUS.join(",");
  renderSweep(await api("/api/sweep", params));
}

async function update() {
  showEngineOptions();
  const state = formState();
  history.replaceState(null, "", linkFor(state));
  const mine = ++generation;
  document.body.dataset.state = "loading";
  if (!state.model) {
    for (const id of ["estimate", "plan", "sweep", "error"]) $(id).hidden = true;
    document.body.dataset.state = "done";
    return;
  }
  try {
    const estimate = await api("/api/estimate", state);
    if (mine !== generation) return;
    renderEstimate(estimate);
    const others = await Promise.allSettled([updatePlan(state, estimate), updateSweep(state)]);
    if (mine !== generation) return;
    if (others[0].status === "rejected") $("plan").hidden = true;
    if (others[1].status === "rejected") $("sweep").hidden = true;
  } catch (error) {
    if (mine !== generation) return;
    showError(error);
  }
  document.body.dataset.state = "done";
}

let timer = null;
function scheduleUpdate() {
  clearTimeout(timer);
  timer = setTimeout(update, 250);
}

async function start() {
  const [info, models, gpus, server] = await Promise.all([
    api("/api/engines", {}), api("/api/models", {}), api("/api/gpus", {}), api("/api/server", {})]);
  buildForm(info);
  const modelList = $("model-list");
  for (const m of models) {
    modelList.append(el("option", {value: m.id}));
  }
  for (const g of gpus) $("gpu-list").append(el("option", {value: g.name}));
  $("server-line").textContent = server.allow_network
    ? "Models: the bundled catalog and the Hugging Face Hub."
    : "Models: the bundled catalog (this server does not fetch from the Hub).";
  applyState(new URLSearchParams(location.search));
  form().addEventListener("input", scheduleUpdate);
  form().addEventListener("change", scheduleUpdate);
  form().addEventListener("submit", (event) => { event.preventDefault(); update(); });
  $("copy-link").addEventListener("click", async () => {
    const link = linkFor(formState());
    try { await navigator.clipboard.writeText(link); } catch (err) { window.prompt("Link to this result:", link); return; }
    $("copied").hidden = false;
    setTimeout(() => { $("copied").hidden = true; }, 1500);
  });
  await update();
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((error) => { showError(error); document.body.dataset.state = "done"; });
});
