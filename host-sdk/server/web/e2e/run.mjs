// End-to-end test of the graph editor in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded). Run from the repository root:
//
//   node host-sdk/server/web/e2e/run.mjs [path/to/nodehost]
//
// It serves the editor with folders under out/e2e/, opens the example graph, sees the run
// refused while SaveVideo's folder is outside the output folder (error on that node), changes
// widgets, runs it, waits for the done event, checks the preview shows the written GIF,
// wires LoadReference -> SaveVideo by dragging on the canvas, saves the graph, runs the saved
// file with the CLI, opens examples/motion-transfer.json (auto-layout) and cancels a run of
// it while the sampler counts steps. Screenshots: out/e2e/editor.png, out/e2e/running.png.
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const nodehost = resolve(process.argv[2] ?? process.env.NODEHOST ?? `${process.env.CARGO_TARGET_DIR ?? "target"}/debug/nodehost`);
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const dir = "out/e2e";
const started = Date.now();
let server;
let browser;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`  ok: ${what}`);
}

async function startServer() {
  server = spawn(nodehost, ["serve", "--port", "0", "--input-dir", "examples/references",
    "--output-dir", `${dir}/output`, "--graphs-dir", `${dir}/graphs`], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((ok, fail) => {
    let text = "";
    server.stdout.on("data", (chunk) => {
      text += chunk;
      const m = text.match(/nodehost editor: (http:\/\/\S+\/)/);
      if (m) ok(m[1]);
    });
    server.on("exit", (code) => fail(new Error(`nodehost serve exited with ${code}: ${text}`)));
    setTimeout(() => fail(new Error(`nodehost serve printed no URL in 30 s: ${text}`)), 30000).unref();
  });
}

async function main() {
  check(existsSync(nodehost), `nodehost binary at ${nodehost}`);
  check(existsSync(browserPath), `Chromium at ${browserPath}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(`${dir}/graphs`, { recursive: true });
  copyFileSync("examples/load-save.json", `${dir}/graphs/load-save.json`);
  const url = await startServer();
  console.log(`  editor at ${url}`);

  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 20000 });
  check((await page.locator("#palette button[data-class=SaveVideo]").count()) === 1, "palette lists SaveVideo");

  // Open the example graph from the graphs folder.
  await page.selectOption("#graph-list", "load-save");
  await page.click("#open");
  await page.waitForSelector('#inspector section[data-node="2"]');
  const doc = await page.evaluate(() => window.editor.document());
  check(doc["2"].inputs.video[0] === "1" && doc["2"].inputs.video[1] === 0, "the example's link 1 -> 2 is on the canvas");

  // Its folder "output" is outside the output folder: refused, with the error on node 2.
  await page.click("#run");
  await page.waitForSelector("body[data-job-state=refused]");
  const problems = await page.textContent("#problems");
  check(/node 2 \(SaveVideo\), input 'folder'.*outside the output folder/.test(problems), `refusal names node 2 and 'folder': ${problems.trim()}`);
  check(await page.evaluate(() => window.editor.graph.getNodeById(2).runState?.state === "error"), "node 2 shows the error");

  // Change widgets, then run.
  await page.fill('[data-node="2"][data-input="folder"]', `${dir}/output`);
  await page.fill('[data-node="2"][data-input="prefix"]', "e2e-edited");
  await page.fill('[data-node="1"][data-input="stride"]', "2");
  await page.click("#status"); // blur: fires the change events
  const edited = await page.evaluate(() => window.editor.document());
  check(edited["2"].inputs.prefix === "e2e-edited" && edited["1"].inputs.stride === 2, "widgets changed");
  await page.click("#run");
  await page.waitForSelector("body[data-job-state=done]", { timeout: 60000 });
  const seen = await page.evaluate(() => window.editor.state.seen);
  for (const t of ["queued", "plan", "node_started", "progress", "node_finished", "done"]) check(seen.includes(t), `event ${t} arrived`);
  const written = `${dir}/output/e2e-edited_00001.gif`;
  check(existsSync(written), `${written} written`);
  const media = await page.evaluate(() => {
    const img = document.querySelector("#preview #preview-media");
    return img && { src: img.getAttribute("src"), width: img.naturalWidth, complete: img.complete };
  });
  check(media && media.src.endsWith("/e2e-edited_00001.gif") && media.width > 0, `preview shows the GIF (${JSON.stringify(media)})`);
  if (await page.locator("#scrub").count()) {
    await page.locator("#scrub").fill("1");
    await page.waitForFunction(() => document.querySelector("#preview canvas:not([hidden])"));
    check(true, "frames scrub");
  }

  // Wire a second SaveVideo from the palette by dragging LoadReference's output onto its input.
  await page.click("#palette button[data-class=SaveVideo]");
  const drag = await page.evaluate(() => {
    const { graph, canvas } = window.editor;
    const nodes = graph._nodes;
    const save = nodes[nodes.length - 1];
    const load = graph.getNodeById(1);
    save.pos = [load.pos[0] + 340, load.pos[1] + 260];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    const rect = canvas.canvas.getBoundingClientRect();
    const toPage = (p) => { const c = canvas.ds.convertOffsetToCanvas(p); return [rect.left + c[0], rect.top + c[1]]; };
    return { id: save.id, from: toPage(load.getConnectionPos(false, 0)), to: toPage(save.getConnectionPos(true, 0)) };
  });
  await page.mouse.move(...drag.from);
  await page.mouse.down();
  await page.mouse.move(...drag.to, { steps: 12 });
  await page.mouse.up();
  const wired = await page.evaluate((id) => window.editor.document()[String(id)].inputs.video, drag.id);
  check(Array.isArray(wired) && wired[0] === "1" && wired[1] === 0, `dragged link LoadReference -> SaveVideo ${drag.id} (${JSON.stringify(wired)})`);
  // Linking a widget's input hides the widget; unlinking shows it again.
  const hides = await page.evaluate(async (id) => {
    const tick = () => new Promise((r) => setTimeout(r, 0));
    const { graph } = window.editor;
    const save = graph.getNodeById(id);
    const prefix = () => save.widgets.find((w) => w.name === "prefix");
    graph.getNodeById(2).connect(0, save, save.findInputSlot("prefix"));
    await tick();
    const linked = prefix().hidden === true && !document.querySelector(`[data-node="${id}"][data-input="prefix"]`);
    save.disconnectInput(save.findInputSlot("prefix"));
    await tick();
    return linked && !prefix().hidden;
  }, drag.id);
  await page.waitForSelector(`[data-node="${drag.id}"][data-input="prefix"]`);
  check(hides, "a linked input hides its widget, unlinking shows it");
  const refused = await page.evaluate((id) => {
    const { graph } = window.editor;
    const save = graph.getNodeById(id);
    return graph.getNodeById(2).connect(0, save, save.findInputSlot("video")) == null;
  }, drag.id);
  check(refused, "a STRING output does not connect to a VIDEO input");
  await page.fill(`[data-node="${drag.id}"][data-input="folder"]`, `${dir}/output`);
  await page.fill(`[data-node="${drag.id}"][data-input="prefix"]`, "e2e-wired");
  await page.click("#status");

  // Save, and check the file is the CLI's shape with the layout under _graph.editor.
  await page.fill("#graph-name", "e2e-saved");
  await page.click("#save");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("saved"));
  const saved = JSON.parse(readFileSync(`${dir}/graphs/e2e-saved.json`, "utf8"));
  check(saved["2"].class_type === "SaveVideo" && saved["2"].inputs.prefix === "e2e-edited", "saved graph keeps the edits");
  check(Array.isArray(saved._graph?.editor?.nodes?.["1"]?.pos), "saved graph has the layout under _graph.editor");
  await page.screenshot({ path: `${dir}/editor.png` });
  console.log(`  screenshot: ${resolve(dir, "editor.png")}`);
  // A CLI graph without layout opens laid out: every node placed apart and in view.
  await page.setInputFiles("#open-file", "examples/motion-transfer.json");
  await page.waitForSelector('#inspector section[data-node="5"]');
  const layout = await page.evaluate(() => {
    const { graph, canvas } = window.editor;
    const rect = canvas.canvas.getBoundingClientRect();
    return graph._nodes.map((n) => {
      const [x, y] = canvas.ds.convertOffsetToCanvas(n.pos);
      return { id: n.id, x, y, inView: x >= 0 && y >= 0 && x < rect.width && y < rect.height };
    });
  });
  const distinct = new Set(layout.map((n) => `${Math.round(n.x)},${Math.round(n.y)}`)).size;
  check(layout.length === 5 && distinct === 5 && layout.every((n) => n.inView), `motion-transfer.json auto-laid out in view (${JSON.stringify(layout)})`);
  const reopened = await page.evaluate(() => window.editor.document());
  const original = JSON.parse(readFileSync("examples/motion-transfer.json", "utf8"));
  const same = Object.entries(original).filter(([id]) => !id.startsWith("_")).every(([id, node]) =>
    reopened[id].class_type === node.class_type &&
    Object.entries(node.inputs).every(([k, v]) => JSON.stringify(reopened[id].inputs[k]) === JSON.stringify(v)));
  check(same && reopened["1"]._meta?.title === original["1"]._meta.title, "its inputs, links and node keys come back unchanged");
  // Run it on the shipped model and cancel while the sampler reports steps: the step counter
  // is on node 4, the job ends cancelled and writes nothing. (E2E_BUNDLE: another bundle
  // folder, e.g. while the working tree's is being re-exported.)
  await page.fill('[data-node="5"][data-input="folder"]', `${dir}/output`);
  if (process.env.E2E_BUNDLE) await page.fill('[data-node="2"][data-input="bundle"]', process.env.E2E_BUNDLE);
  await page.click("#status");
  await page.click("#run");
  await page.waitForFunction(() => window.editor.graph.getNodeById(4).runState?.step >= 1 || document.body.dataset.jobState === "failed",
    null, { timeout: 120000 });
  const counter = await page.evaluate(() => window.editor.graph.getNodeById(4).runState);
  check(counter?.state === "running" && counter.step >= 1 && counter.total > 1, `step counter on the sampler node (${JSON.stringify(counter)}; ${await page.textContent("#status")})`);
  await page.screenshot({ path: `${dir}/running.png` });
  await page.click("#cancel");
  await page.waitForSelector("body[data-job-state=cancelled]", { timeout: 30000 });
  check(!readdirSync(`${dir}/output`).some((f) => f.startsWith("motion-transfer")), "cancelled run wrote nothing");
  check(consoleErrors.length === 0, `no page errors ${consoleErrors.join("; ")}`);
  await browser.close();
  browser = null;

  // The saved graph runs unchanged with the CLI.
  const cli = spawnSync(nodehost, ["run", `${dir}/graphs/e2e-saved.json`, "--plain"], { encoding: "utf8" });
  check(cli.status === 0, `nodehost run of the saved graph exits 0 ${cli.status === 0 ? "" : cli.stderr + cli.stdout}`);
  check(existsSync(`${dir}/output/e2e-edited_00002.gif`) && existsSync(`${dir}/output/e2e-wired_00001.gif`), "the CLI wrote both SaveVideo outputs");
}

try {
  await main();
  console.log(`e2e: 1 passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
} catch (e) {
  console.error(e);
  if (browser) {
    try {
      const [page] = browser.contexts()[0]?.pages() ?? [];
      if (page) { await page.screenshot({ path: join(dir, "failure.png") }); console.error(`  screenshot: ${resolve(dir, "failure.png")}`); }
    } catch {}
  }
  console.log("e2e: 0 passed, 1 failed");
  process.exitCode = 1;
} finally {
  await browser?.close();
  server?.kill();
}
