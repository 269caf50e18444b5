// Builds the editor page into dist/ (index.html, app.js, app.css), which node-server embeds.
// `node build.mjs --check` builds into a temporary folder and fails when the committed
// dist/ differs, so a stale page cannot pass the tests.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const check = process.argv.includes("--check");
const here = new URL(".", import.meta.url).pathname;
const out = check ? mkdtempSync(join(tmpdir(), "editor-dist-")) : join(here, "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: { app: join(here, "src/main.js") },
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2022",
  legalComments: "none",
  logLevel: "warning",
  outdir: out,
});
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));

if (check) {
  const stale = ["index.html", "app.js", "app.css"].filter((f) => {
    try {
      return !readFileSync(join(out, f)).equals(readFileSync(join(here, "dist", f)));
    } catch {
      return true;
    }
  });
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`host-sdk/server/web/dist is stale (${stale.join(", ")}): run \`npm run build\` in host-sdk/server/web and commit dist/`);
    process.exit(1);
  }
  console.log("web dist is up to date");
}
