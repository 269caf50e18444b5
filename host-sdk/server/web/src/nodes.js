// Node classes generated from the server's schemas (GET /api/nodes): sockets coloured by
// type, widgets from each input's type, range, choices and file role.
import { LiteGraph, LGraphCanvas, LGraphNode } from "@comfyorg/litegraph";

export const TYPE_COLOURS = {
  VIDEO: "#e57373", LATENT: "#ba68c8", CONDITIONING: "#ffb74d", MODEL: "#9575cd",
  INT: "#4fc3f7", FLOAT: "#81c784", STRING: "#f0e68c", BOOLEAN: "#90a4ae", CHOICE: "#f0e68c",
};
const LITERAL = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "CHOICE"]);

/** Mirrors ValueType::feeds in the host SDK: which output type may feed which input type. */
export function feeds(out, input) {
  return out === input || (out === "STRING" && input === "CHOICE") ||
    (out === "CHOICE" && input === "STRING") || (out === "INT" && input === "FLOAT");
}

/** Files of the input folder, offered by file-picker widgets (filled by main.js). */
export const inputFiles = [];

/** Called when any widget changes (main.js sets it to refresh the inspector). */
export const hooks = { widgetChanged: () => {}, linksChanged: () => {} };

function decimals(step) {
  const s = String(step ?? 1);
  return s.includes(".") ? s.split(".")[1].length : 0;
}

function addWidget(node, input) {
  const fallback = { INT: 0, FLOAT: 0, BOOLEAN: false, STRING: "", CHOICE: input.choices[0] ?? "" };
  const value = input.default ?? fallback[input.type];
  const changed = (v) => {
    const w = node.widgets.find((w) => w.name === input.name);
    if (input.type === "INT" && w) w.value = Math.round(v);
    hooks.widgetChanged(node, input.name);
  };
  const opts = {};
  if (input.min != null) opts.min = input.min;
  if (input.max != null) opts.max = input.max;
  switch (input.type) {
    case "INT":
    case "FLOAT":
      opts.step2 = input.step ?? (input.type === "INT" ? 1 : 0.01);
      opts.precision = input.type === "INT" ? 0 : Math.max(decimals(opts.step2), 1);
      return node.addWidget("number", input.name, value, changed, opts);
    case "BOOLEAN":
      return node.addWidget("toggle", input.name, value, changed, {});
    case "CHOICE":
      return node.addWidget("combo", input.name, value, changed, { values: input.choices });
    default:
      if (input.file === "input_file") {
        // A picker over the input folder; the list is shared and refreshed by main.js.
        return node.addWidget("combo", input.name, value, changed, { values: () => pickerValues(node, input.name) });
      }
      return node.addWidget("text", input.name, value, changed, {});
  }
}

function pickerValues(node, name) {
  const current = node.widgets?.find((w) => w.name === name)?.value;
  return current && !inputFiles.includes(current) ? [current, ...inputFiles] : inputFiles;
}

/** Registers one node class per schema; returns class_type → litegraph type name. */
export function registerSchemas(schemas) {
  LiteGraph.isValidConnection = (a, b) => feeds(String(a), String(b));
  for (const [type, colour] of Object.entries(TYPE_COLOURS)) LGraphCanvas.link_type_colors[type] = colour;
  const typeNames = {};
  for (const schema of Object.values(schemas)) {
    class SchemaNode extends LGraphNode {
      constructor(title) {
        super(title ?? schema.display_name);
        this.classType = schema.class_type;
        this.extra = {};
        this.inputOrder = schema.inputs.map((i) => i.name);
        this.runState = null;
        for (const input of schema.inputs) {
          const colour = TYPE_COLOURS[input.type];
          if (input.accepts !== "constant") {
            this.addInput(input.name, input.type, { color_on: colour, color_off: colour });
          }
          if (input.accepts !== "link" && LITERAL.has(input.type)) addWidget(this, input);
        }
        for (const output of schema.outputs) {
          const colour = TYPE_COLOURS[output.type];
          this.addOutput(output.name, output.type, { color_on: colour, color_off: colour });
        }
        this.size = this.computeSize();
        this.size[0] = Math.max(this.size[0], 240);
      }

      // A linked input hides its widget; unlinking shows it again.
      onConnectionsChange(type, index, connected, _link, slot) {
        if (type !== LiteGraph.INPUT || !slot) return;
        const widget = this.widgets?.find((w) => w.name === slot.name);
        if (widget) widget.hidden = connected;
        this.setSize([this.size[0], this.computeSize()[1]]);
        hooks.linksChanged(this);
      }

      // Run state: a step counter above the title, the error message under the node.
      onDrawForeground(ctx) {
        const s = this.runState;
        if (!s) return;
        ctx.save();
        ctx.font = "12px sans-serif";
        const top = -LiteGraph.NODE_TITLE_HEIGHT - 6;
        const colours = { queued: "#aaa", running: "#4fc3f7", cached: "#90a4ae", done: "#a5d6a7", error: "#ff8a80" };
        ctx.fillStyle = colours[s.state] ?? "#ddd";
        let text = s.state;
        if (s.state === "running" && s.total) text = `step ${s.step}/${s.total}${s.message ? " · " + s.message : ""}`;
        if (s.state === "done" && s.seconds != null) text = `done in ${s.seconds.toFixed(2)} s`;
        ctx.fillText(text, 4, top);
        if (s.state === "error" && s.message) {
          ctx.fillText(s.message.length > 80 ? s.message.slice(0, 79) + "…" : s.message, 4, this.size[1] + 16);
        }
        ctx.restore();
      }
    }
    SchemaNode.title = schema.display_name;
    SchemaNode.desc = schema.description;
    const typeName = `${schema.category}/${schema.class_type}`;
    LiteGraph.registerNodeType(typeName, SchemaNode);
    typeNames[schema.class_type] = typeName;
  }
  return typeNames;
}
