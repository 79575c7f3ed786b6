#!/usr/bin/env node
// Drives logstream's web page (GET /) in the system Chromium, for
// sidecar/tests/browser.rs and for a person who wants a screenshot.
//
//   node page.mjs URL [--history MARKER]... [--live MARKER]... [--stdin]
//                     [--screenshot PNG] [--user-data-dir DIR] [--chromium PATH]
//
// Protocol on stdout, one line each, in this order:
//   SEEN <marker>   for each --history marker (already in the page's history)
//   READY           the page is live (#status says "live") and shows the history
//   SEEN <marker>   for each --live marker, then each line read from stdin
//                   (with --stdin, until EOF): a line appended after READY
//   ROW <classes>\t<css color>\t<text>   every line rendered ([data-testid=line]), top to bottom
//   SHOT <path>     the screenshot was written (with --screenshot)
//   DONE
// Every wait is bounded by PAGE_TIMEOUT_MS (default 30000); on timeout or any
// other failure it prints the reason, the page's status and its last lines on
// stderr and exits 1 (2 for bad usage). Browser console errors go to stderr.
// It never downloads a browser: it runs --chromium (default $CHROMIUM or
// /usr/bin/chromium), installed by .ci/install-tools.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const TIMEOUT_MS = Number(process.env.PAGE_TIMEOUT_MS || 30000);
const usage = "usage: node page.mjs URL [--history MARKER]... [--live MARKER]... [--stdin] " +
  "[--screenshot PNG] [--user-data-dir DIR] [--chromium PATH]";

function parseArgs(argv) {
  const o = { url: "", history: [], live: [], stdin: false, screenshot: "", userDataDir: "",
    chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(2, `${a} needs a value\n${usage}`);
      return argv[++i];
    };
    switch (a) {
      case "--history": o.history.push(value()); break;
      case "--live": o.live.push(value()); break;
      case "--stdin": o.stdin = true; break;
      case "--screenshot": o.screenshot = value(); break;
      case "--user-data-dir": o.userDataDir = value(); break;
      case "--chromium": o.chromium = value(); break;
      case "-h": case "--help": console.log(usage); process.exit(0); break;
      default:
        if (a.startsWith("-") || o.url) die(2, `unexpected argument ${JSON.stringify(a)}\n${usage}`);
        o.url = a;
    }
  }
  if (!o.url) die(2, usage);
  return o;
}

function die(code, msg) {
  console.error(`page.mjs: ${msg}`);
  process.exit(code);
}

const out = line => process.stdout.write(line + "\n");
const oneLine = s => s.replace(/[\t\r\n]+/g, " ");

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (e) {
    die(1, `cannot load playwright-core (${e.message}); run .ci/install-tools`);
  }

  const ownProfile = !opts.userDataDir;
  const profile = opts.userDataDir || mkdtempSync(join(tmpdir(), "logstream-chromium-"));
  let context;
  let page;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: opts.chromium,
      headless: true, // playwright passes --headless
      timeout: TIMEOUT_MS,
      viewport: { width: 1000, height: 600 },
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    page.on("console", m => { if (m.type() === "error" || m.type() === "warning") console.error(`console.${m.type()}: ${m.text()}`); });
    page.on("pageerror", e => console.error(`pageerror: ${e.message}`));

    const step = async (what, fn) => {
      try {
        return await fn();
      } catch (e) {
        throw new Error(`${what}: ${e.message.split("\n")[0]}\n${await describe(page)}`);
      }
    };
    const seen = async marker => {
      await step(`waiting ${TIMEOUT_MS} ms for a line containing ${JSON.stringify(marker)} in the page's lines`, () =>
        page.waitForFunction(
          // A rendered row, or a line the page holds off screen (the list is virtual).
          m => Array.from(document.querySelectorAll("[data-testid=line]"), d => d.textContent).some(t => t.includes(m)) ||
            (window.logstreamStats?.lines() || []).some(t => t.includes(m)),
          marker, { timeout: TIMEOUT_MS }));
      out(`SEEN ${marker}`);
    };

    const resp = await step(`opening ${opts.url}`, () => page.goto(opts.url, { timeout: TIMEOUT_MS }));
    if (!resp || !resp.ok()) throw new Error(`GET ${opts.url} answered ${resp ? resp.status() : "nothing"}`);
    await step(`waiting ${TIMEOUT_MS} ms for #status to say "live"`, () =>
      page.waitForFunction(() => document.getElementById("status")?.textContent === "live", null, { timeout: TIMEOUT_MS }));
    for (const m of opts.history) await seen(m);
    out("READY");

    for (const m of opts.live) await seen(m);
    if (opts.stdin) {
      for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
        if (line.trim()) await seen(line.trim());
      }
    }

    const rows = await page.$$eval("[data-testid=line]", ds => ds.map(d => [d.className, getComputedStyle(d).color, d.textContent]));
    for (const [cls, color, text] of rows) out(`ROW ${oneLine(cls)}\t${color}\t${oneLine(text)}`);
    if (opts.screenshot) {
      await step("taking the screenshot", () => page.screenshot({ path: opts.screenshot, fullPage: true }));
      out(`SHOT ${opts.screenshot}`);
    }
    out("DONE");
  } finally {
    if (context) await context.close().catch(() => {});
    if (ownProfile) rmSync(profile, { recursive: true, force: true });
  }
}

// What the page shows, for failure messages.
async function describe(page) {
  if (!page) return "(no page)";
  try {
    const s = await page.evaluate(() => ({
      status: document.getElementById("status")?.textContent,
      count: document.querySelectorAll("[data-testid=line]").length,
      last: Array.from(document.querySelectorAll("#spacer > div"), d => d.textContent).slice(-10),
    }));
    return `  page status: ${JSON.stringify(s.status)}; ${s.count} lines in #log; last ones:\n` +
      s.last.map(t => `    ${t}`).join("\n");
  } catch (e) {
    return `  (page state unavailable: ${e.message.split("\n")[0]})`;
  }
}

main().then(() => process.exit(0), e => die(1, e.message));
