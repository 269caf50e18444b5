// Graph documents: the API-prompt JSON the CLI runs ({"id": {"class_type", "inputs"}},
// links as ["id", slot]) <-> the litegraph canvas. Editor layout lives under
// `_graph.editor` (the host keeps `_`-prefixed keys and the executor ignores them), so a
// graph saved here runs unchanged with `nodehost run`; other `_` keys and unknown node keys
// (e.g. `_meta`) are carried through.
import { LiteGraph } from "@comfyorg/litegraph";

export const FORMAT_VERSION = 1;

/** The document of `graph`; `meta` holds the `_` keys of the document it was opened from. */
export function toPrompt(graph, canvas, meta) {
  const doc = {};
  const layout = {};
  const nodes = [...graph._nodes].sort((a, b) => Number(a.id) - Number(b.id));
  for (const node of nodes) {
    if (!node.classType) continue;
    const inputs = {};
    for (const w of node.widgets ?? []) {
      inputs[w.name] = w.value;
    }
    for (const slot of node.inputs ?? []) {
      if (slot.link == null) continue;
      const link = graph.getLink(slot.link);
      if (link) inputs[slot.name] = [String(link.origin_id), link.origin_slot];
    }
    // Inputs in schema order (widgets and sockets interleave there).
    const ordered = {};
    for (const name of node.inputOrder ?? Object.keys(inputs)) if (name in inputs) ordered[name] = inputs[name];
    doc[String(node.id)] = { class_type: node.classType, inputs: ordered, ...node.extra };
    layout[String(node.id)] = { pos: roundAll(node.pos), size: roundAll(node.size) };
  }
  const graphMeta = { ...(meta._graph ?? {}), format_version: FORMAT_VERSION };
  graphMeta.editor = {
    nodes: layout,
    view: { offset: roundAll(canvas.ds.offset), scale: Math.round(canvas.ds.scale * 1000) / 1000 },
  };
  return { ...doc, ...meta, _graph: graphMeta };
}

function roundAll(v) {
  return [...v].map((x) => Math.round(x));
}

/**
 * Replaces the canvas's graph with `doc`. Returns the document's `_` keys and a list of
 * warnings (unknown classes, bad links). Nodes without saved positions are laid out by
 * dependency depth.
 */
export function fromPrompt(doc, graph, canvas, typeNames) {
  graph.clear();
  const meta = {};
  const warnings = [];
  const byId = new Map();
  const entries = [];
  for (const [id, entry] of Object.entries(doc)) {
    if (id.startsWith("_")) { meta[id] = entry; continue; }
    const typeName = typeNames[entry?.class_type];
    if (!typeName) { warnings.push(`node ${id}: unknown class '${entry?.class_type}' (is its plugin loaded?); left out`); continue; }
    const node = LiteGraph.createNode(typeName);
    if (/^[1-9]\d*$/.test(id)) node.id = Number(id);
    const { class_type: _c, inputs = {}, ...extra } = entry;
    node.extra = extra;
    if (typeof extra._meta?.title === "string") node.title = extra._meta.title;
    for (const [name, value] of Object.entries(inputs)) {
      if (Array.isArray(value)) continue;
      const w = node.widgets?.find((w) => w.name === name);
      if (w) w.value = value;
      else warnings.push(`node ${id}: input '${name}' has no widget; dropped`);
    }
    graph.add(node);
    byId.set(id, node);
    entries.push([id, node, inputs]);
  }
  for (const [id, node, inputs] of entries) {
    for (const [name, value] of Object.entries(inputs)) {
      if (!Array.isArray(value)) continue;
      const [src, slot] = value;
      const origin = byId.get(String(src));
      const target = node.findInputSlot(name);
      if (!origin || target < 0 || !origin.connect(slot, node, target)) {
        warnings.push(`node ${id}: link ${JSON.stringify(value)} to '${name}' could not be made`);
      }
    }
  }
  const saved = meta._graph?.editor;
  const positions = saved?.nodes ?? {};
  const missing = entries.some(([id]) => !positions[id]?.pos);
  if (missing) autoLayout(entries, byId);
  else {
    for (const [id, node] of entries) {
      node.pos = [...positions[id].pos];
      if (positions[id].size) node.size = [Math.max(positions[id].size[0], node.size[0]), Math.max(positions[id].size[1], node.size[1])];
    }
  }
  if (saved?.view && !missing) {
    canvas.ds.offset = [...saved.view.offset];
    canvas.ds.scale = saved.view.scale;
  } else {
    fitView(entries.map(([, node]) => node), canvas);
  }
  canvas.setDirty(true, true);
  return { meta, warnings };
}

/** Columns by longest path from a source node; rows in document order. */
function autoLayout(entries, byId) {
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const inputs = entries.find(([i]) => i === id)?.[2] ?? {};
    let d = 0;
    for (const v of Object.values(inputs)) {
      if (Array.isArray(v) && byId.has(String(v[0]))) d = Math.max(d, depthOf(String(v[0]), seen) + 1);
    }
    depth.set(id, d);
    return d;
  };
  const columnY = [];
  for (const [id, node] of entries) {
    const d = depthOf(id);
    const y = columnY[d] ?? 40;
    node.pos = [40 + d * 300, y];
    columnY[d] = y + node.size[1] + 70;
  }
}

/** Scales and moves the view so every node is visible (never zooming in past 1:1). */
function fitView(nodes, canvas) {
  if (!nodes.length) {
    canvas.ds.offset = [20, 20];
    canvas.ds.scale = 1;
    return;
  }
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const minX = Math.min(...nodes.map((n) => n.pos[0]));
  const minY = Math.min(...nodes.map((n) => n.pos[1] - title));
  const maxX = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
  const maxY = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
  const width = canvas.canvas.clientWidth || 800;
  const height = canvas.canvas.clientHeight || 600;
  const margin = 30;
  const scale = Math.min(1, (width - 2 * margin) / (maxX - minX), (height - 2 * margin) / (maxY - minY));
  canvas.ds.scale = Math.max(scale, 0.2);
  canvas.ds.offset = [margin / canvas.ds.scale - minX, margin / canvas.ds.scale - minY];
}
