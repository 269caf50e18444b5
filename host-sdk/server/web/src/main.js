// The graph editor page: palette, canvas, node inspector, open/save, run with live
// progress, and the result preview. Served by `nodehost serve` (host-sdk/server).
import "./style.css";
import { LGraph, LGraphCanvas, LiteGraph } from "@comfyorg/litegraph";
import { api } from "./api.js";
import { fromPrompt, toPrompt } from "./document.js";
import { hooks, inputFiles, registerSchemas } from "./nodes.js";
import { showOutputs } from "./preview.js";

const $ = (id) => document.getElementById(id);
// `seen`: the types of the events of the last job, in order (read by the end-to-end test).
const state = { schemas: {}, typeNames: {}, meta: {}, job: null, events: null, seen: [] };

const graph = new LGraph();
const canvasEl = $("canvas");
const canvas = new LGraphCanvas(canvasEl, graph);
canvas.show_info = false;
// Exposed for debugging in the browser console and for the end-to-end test's checks.
window.editor = { graph, canvas, state, document: () => currentDocument() };

function fitCanvas() {
  const wrap = $("canvas-wrap");
  canvas.resize(wrap.clientWidth, wrap.clientHeight);
}
window.addEventListener("resize", fitCanvas);

function status(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = kind;
}

function currentDocument() {
  return toPrompt(graph, canvas, state.meta);
}

// ---- palette ------------------------------------------------------------------------

function buildPalette() {
  const byCategory = {};
  for (const s of Object.values(state.schemas)) (byCategory[s.category] ??= []).push(s);
  const palette = $("palette");
  palette.replaceChildren();
  for (const category of Object.keys(byCategory).sort()) {
    const details = document.createElement("details");
    details.open = true;
    const summary = document.createElement("summary");
    summary.textContent = category;
    details.append(summary);
    for (const s of byCategory[category].sort((a, b) => a.display_name.localeCompare(b.display_name))) {
      const b = document.createElement("button");
      b.textContent = s.display_name;
      b.title = s.description;
      b.dataset.class = s.class_type;
      b.addEventListener("click", () => addNode(s.class_type));
      details.append(b);
    }
    palette.append(details);
  }
}

function addNode(classType) {
  const node = LiteGraph.createNode(state.typeNames[classType]);
  const [ox, oy] = canvas.ds.offset;
  const scale = canvas.ds.scale;
  const n = graph._nodes.length;
  node.pos = [(-ox + 60 + (n % 5) * 30) / scale, (-oy + 60 + (n % 5) * 30) / scale];
  graph.add(node);
  canvas.selectNode(node);
  renderInspector();
}

// ---- inspector: every node's inputs as form fields, kept in sync with the widgets --------

function renderInspector() {
  const panel = $("inspector");
  panel.replaceChildren();
  const title = document.createElement("h2");
  title.textContent = "Inputs";
  panel.append(title);
  const nodes = [...graph._nodes].sort((a, b) => Number(a.id) - Number(b.id));
  for (const node of nodes) {
    const schema = state.schemas[node.classType];
    if (!schema) continue;
    const section = document.createElement("section");
    section.dataset.node = String(node.id);
    if (canvas.selected_nodes?.[node.id]) section.classList.add("selected");
    if (node.runState?.state === "error") section.classList.add("error");
    const h = document.createElement("h3");
    h.textContent = `${node.id} · ${node.title}`;
    h.addEventListener("click", () => { canvas.selectNode(node); canvas.centerOnNode?.(node); });
    section.append(h);
    for (const input of schema.inputs) {
      const slot = node.inputs?.find((s) => s.name === input.name);
      const widget = node.widgets?.find((w) => w.name === input.name);
      const label = document.createElement("label");
      label.title = input.tooltip || input.name;
      const name = document.createElement("span");
      name.textContent = input.name;
      label.append(name);
      if (slot?.link != null) {
        const link = graph.getLink(slot.link);
        const from = document.createElement("span");
        from.className = "linked";
        from.textContent = link ? `← node ${link.origin_id} output ${link.origin_slot}` : "linked";
        label.append(from);
      } else if (widget) {
        label.append(field(node, input, widget));
      } else {
        const hint = document.createElement("span");
        hint.className = "linked";
        hint.textContent = `${input.type} link${input.required ? " (required)" : ""}`;
        label.append(hint);
      }
      section.append(label);
    }
    panel.append(section);
  }
}

function field(node, input, widget) {
  let control;
  const values = input.type === "CHOICE" ? input.choices
    : input.file === "input_file" ? (inputFiles.includes(widget.value) || !widget.value ? inputFiles : [widget.value, ...inputFiles])
    : null;
  if (values) {
    control = document.createElement("select");
    for (const v of values) control.append(new Option(v, v));
    control.value = widget.value;
  } else if (input.type === "BOOLEAN") {
    control = document.createElement("input");
    control.type = "checkbox";
    control.checked = !!widget.value;
  } else {
    control = document.createElement("input");
    if (input.type === "INT" || input.type === "FLOAT") {
      control.type = "number";
      if (input.min != null) control.min = input.min;
      if (input.max != null) control.max = input.max;
      control.step = input.step ?? (input.type === "INT" ? 1 : "any");
    }
    control.value = widget.value;
  }
  control.dataset.node = String(node.id);
  control.dataset.input = input.name;
  control.addEventListener("change", () => {
    let v = input.type === "BOOLEAN" ? control.checked : control.value;
    if (input.type === "INT") v = Math.round(Number(v));
    if (input.type === "FLOAT") v = Number(v);
    widget.value = v;
    node.setDirtyCanvas(true, true);
  });
  return control;
}

hooks.widgetChanged = () => renderInspector();
hooks.linksChanged = () => queueMicrotask(renderInspector);
graph.onNodeAdded = () => queueMicrotask(renderInspector);
graph.onNodeRemoved = () => queueMicrotask(renderInspector);
canvas.onNodeSelected = () => renderInspector();

// ---- open / save ------------------------------------------------------------------------

async function refreshGraphList(select) {
  const { graphs } = await api.graphs();
  const list = $("graph-list");
  list.replaceChildren(...graphs.map((g) => new Option(g, g)));
  if (select) list.value = select;
}

function openDocument(doc, name) {
  clearRun();
  const { meta, warnings } = fromPrompt(doc, graph, canvas, state.typeNames);
  state.meta = meta;
  if (name) $("graph-name").value = name;
  renderInspector();
  status(warnings.length ? `opened ${name ?? "graph"} with warnings: ${warnings.join("; ")}` : `opened ${name ?? "graph"}`, warnings.length ? "error" : "");
}

$("open").addEventListener("click", async () => {
  const name = $("graph-list").value;
  if (!name) return;
  try { openDocument(await api.loadGraph(name), name); } catch (e) { status(e.message, "error"); }
});

$("open-file").addEventListener("change", async (ev) => {
  const file = ev.target.files[0];
  if (!file) return;
  try { openDocument(JSON.parse(await file.text()), file.name.replace(/\.json$/, "")); } catch (e) { status(`${file.name}: ${e.message}`, "error"); }
  ev.target.value = "";
});

$("save").addEventListener("click", async () => {
  const name = $("graph-name").value.trim();
  if (!name) { status("give the graph a name first", "error"); return; }
  try {
    const r = await api.saveGraph(name, currentDocument());
    await refreshGraphList(name);
    status(`saved ${r.path}`, "done");
  } catch (e) { status(e.message, "error"); }
});

$("new").addEventListener("click", () => openDocument({}, ""));

// ---- validate / run / cancel ------------------------------------------------------------

function nodeById(id) {
  return graph._nodes.find((n) => String(n.id) === String(id));
}

function clearRun() {
  for (const n of graph._nodes) { n.runState = null; n.progress = undefined; n.has_errors = false; }
  $("problems").replaceChildren();
  canvas.setDirty(true, true);
}

function showProblems(problems) {
  const box = $("problems");
  box.replaceChildren();
  if (!problems.length) return;
  const h = document.createElement("h2");
  h.textContent = "Problems";
  const ul = document.createElement("ul");
  for (const p of problems) {
    const li = document.createElement("li");
    li.textContent = p.text ?? p.message;
    ul.append(li);
    const node = p.node != null && nodeById(p.node);
    if (node) {
      node.has_errors = true;
      node.runState = { state: "error", message: p.input ? `${p.input}: ${p.message}` : p.message };
    }
  }
  box.append(h, ul);
  canvas.setDirty(true, true);
  renderInspector();
}

$("validate").addEventListener("click", async () => {
  clearRun();
  try {
    const r = await api.validate(currentDocument());
    showProblems(r.problems);
    status(r.ok ? "no problems" : `${r.problems.length} problem(s)`, r.ok ? "done" : "error");
  } catch (e) { status(e.message, "error"); }
});

$("run").addEventListener("click", run);
$("cancel").addEventListener("click", async () => {
  if (state.job == null) return;
  try { await api.cancel(state.job); status(`cancelling job ${state.job}…`); } catch (e) { status(e.message, "error"); }
});

async function run() {
  clearRun();
  state.events?.close();
  document.body.dataset.jobState = "submitting";
  let job;
  try {
    job = (await api.submit(currentDocument())).job;
  } catch (e) {
    showProblems(e.problems ?? []);
    status(e.message, "error");
    document.body.dataset.jobState = "refused";
    return;
  }
  state.job = job;
  state.seen = [];
  $("cancel").disabled = false;
  $("run").disabled = true;
  status(`job ${job} queued`);
  const events = api.events(job);
  state.events = events;
  events.onmessage = (m) => onEvent(JSON.parse(m.data));
}

function onEvent(e) {
  state.seen.push(e.type);
  const node = e.node != null ? nodeById(e.node) : null;
  const label = node ? `node ${e.node} (${node.title})` : "";
  switch (e.type) {
    case "queued":
      status(`job ${e.job} queued${e.position ? ` behind ${e.position}` : ""}`);
      document.body.dataset.jobState = "queued";
      break;
    case "plan":
      for (const id of e.order) { const n = nodeById(id); if (n) n.runState = { state: "queued" }; }
      document.body.dataset.jobState = "running";
      break;
    case "node_started":
      if (node) node.runState = { state: "running" };
      status(`job ${e.job}: ${label} running`);
      break;
    case "progress":
      if (node) {
        node.runState = { state: "running", step: e.step, total: e.total, message: e.message };
        node.progress = e.total ? e.step / e.total : undefined;
      }
      status(`job ${e.job}: ${label} step ${e.step}/${e.total} ${e.message ?? ""}`);
      break;
    case "node_cached":
      if (node) node.runState = { state: "cached" };
      break;
    case "node_finished":
      if (node) { node.runState = { state: "done", seconds: e.seconds }; node.progress = undefined; }
      break;
    case "log":
      if (e.level === "warning" || e.level === "error") status(`${label}: ${e.message}`);
      break;
    case "error":
      if (node) {
        node.has_errors = true;
        node.progress = undefined;
        node.runState = { state: "error", message: e.input ? `${e.input}: ${e.message}` : e.message };
      }
      showProblems(e.problems ?? [{ node: e.node, input: e.input, message: e.message, text: `${label || "graph"}${e.input ? `, input '${e.input}'` : ""}: ${e.message}` }]);
      break;
    case "done":
      state.events?.close();
      state.events = null;
      state.job = null;
      $("cancel").disabled = true;
      $("run").disabled = false;
      for (const n of graph._nodes) if (n.runState?.state === "running" || n.runState?.state === "queued") n.runState = null;
      status(`job ${e.job} ${e.state} in ${e.seconds.toFixed(1)} s`, e.state === "done" ? "done" : "error");
      if (e.state === "done") {
        showOutputs($("preview"), e.outputs).then(() => {
          $("side").scrollTop = 0;
          document.body.dataset.jobState = "done";
        });
      }
      else document.body.dataset.jobState = e.state;
      break;
  }
  canvas.setDirty(true, true);
}

// ---- start --------------------------------------------------------------------------------

async function start() {
  fitCanvas();
  try {
    const [schemas, inputs] = await Promise.all([api.nodes(), api.inputs()]);
    state.schemas = schemas;
    state.typeNames = registerSchemas(schemas);
    inputFiles.push(...inputs.files);
    buildPalette();
    await refreshGraphList();
    renderInspector();
    status(`${Object.keys(schemas).length} node types; inputs from ${inputs.folder}/, outputs to ${inputs.output_folder}/`);
    document.body.dataset.ready = "true";
  } catch (e) {
    status(`cannot reach the server: ${e.message}`, "error");
  }
}

start();
