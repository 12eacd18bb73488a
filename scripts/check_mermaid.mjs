#!/usr/bin/env node
// Parse Mermaid files with the official `mermaid` package (the parser GitHub's renderer uses).
//
//   npm install --prefix ~/.cache/kdgraph-mermaid mermaid@11 jsdom@26
//   node scripts/check_mermaid.mjs [--prefix DIR] FILE.mmd ...
//
// The packages are looked up in --prefix DIR, $KDGRAPH_MERMAID_PREFIX, ~/.cache/kdgraph-mermaid, then
// next to this script. Exit 0: every file parses; 1: a file does not (its error is printed);
// 3: mermaid or jsdom is not installed (callers may skip).
import { createRequire } from "node:module";
import { readFileSync, existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let prefix = process.env.KDGRAPH_MERMAID_PREFIX || join(homedir(), ".cache", "kdgraph-mermaid");
const i = args.indexOf("--prefix");
if (i >= 0) {
  prefix = args[i + 1];
  args.splice(i, 2);
}
if (args.length === 0) {
  console.error("usage: node scripts/check_mermaid.mjs [--prefix DIR] FILE.mmd ...");
  process.exit(2);
}

// resolve a package from the install prefix first, else from this script's own folder
function resolve(name) {
  for (const base of [join(prefix, "node_modules"), fileURLToPath(new URL(".", import.meta.url))]) {
    if (!base || !existsSync(base)) continue;
    try {
      return createRequire(join(base, "noop.js")).resolve(name);
    } catch {}
  }
  return null;
}

const jsdomPath = resolve("jsdom");
const mermaidPath = resolve("mermaid");
if (!jsdomPath || !mermaidPath) {
  console.error(`mermaid and jsdom are not installed (looked in ${prefix}); ` +
    `npm install --prefix ${prefix} mermaid@11 jsdom@26`);
  process.exit(3);
}

// mermaid sanitises labels with DOMPurify, which needs a DOM window before mermaid is imported
const { JSDOM } = await import(pathToFileURL(jsdomPath).href);
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import(pathToFileURL(mermaidPath).href);
mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });

let failed = 0;
for (const file of args) {
  const text = readFileSync(file, "utf8");
  try {
    const result = await mermaid.parse(text);
    console.log(`${file}: ok (${result.diagramType})`);
  } catch (e) {
    failed += 1;
    console.error(`${file}: ${String(e.message || e).split("\n").slice(0, 4).join(" | ")}`);
  }
}
process.exit(failed ? 1 : 0);
