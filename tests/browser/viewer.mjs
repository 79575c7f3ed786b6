#!/usr/bin/env node
// Drives logstream's web page step by step for sidecar/tests/browser.rs: the
// test writes one JSON command per line on stdin, and reads one answer per
// command on stdout, `OK <json value>` or `ERR <reason>`; the test decides
// what to write to the server's files between steps.
//
//   node viewer.mjs [--chromium PATH] [--user-data-dir DIR] [--downloads DIR] [--timezone IANA]
//
// Commands ({"op": ..., ...}):
//   open {url}              go to url (the page), answer its HTTP status
//   wait {js}               until the expression `js` is truthy in the page
//   eval {js}               the expression's value (JSON)
//   click {sel, nth?}       click the nth (0) element matching sel
//   fill {sel, text}        type into an input and press Enter
//   press {key}             a key press on the page (keyboard shortcuts)
//   select {sel, value}     choose an option of a <select>
//   wheel {dy}              mouse wheel over the line list
//   download {sel}          click sel, answer {name, text} of the download
//   shot {path, full?}      screenshot (PNG)
//   scheme {value}          prefers-color-scheme: "dark" or "light"
//   reload                  reload the page
//   heap                    CDP Performance metrics: {JSHeapUsedSize, ...}
//   header {url, name}      a response header of GET url (from the page)
//   throttle {rate}         slow the page's CPU down rate times (1: full speed)
// Every wait is bounded by PAGE_TIMEOUT_MS (default 30000). Browser console
// errors go to stderr. It never downloads a browser (see page.mjs).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const TIMEOUT_MS = Number(process.env.PAGE_TIMEOUT_MS || 30000);
const out = line => process.stdout.write(line + "\n");

function args(argv) {
  const o = { chromium: process.env.CHROMIUM || "/usr/bin/chromium", userDataDir: "", downloads: "", timezone: "" };
  for (let i = 0; i < argv.length; i++) {
    const v = () => argv[++i];
    switch (argv[i]) {
      case "--chromium": o.chromium = v(); break;
      case "--user-data-dir": o.userDataDir = v(); break;
      case "--downloads": o.downloads = v(); break;
      case "--timezone": o.timezone = v(); break;
      default: console.error(`viewer.mjs: unexpected argument ${argv[i]}`); process.exit(2);
    }
  }
  return o;
}

async function main() {
  const opts = args(process.argv.slice(2));
  const { chromium } = await import("playwright-core");
  const ownProfile = !opts.userDataDir;
  const profile = opts.userDataDir || mkdtempSync(join(tmpdir(), "logstream-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    timeout: TIMEOUT_MS,
    viewport: { width: 1280, height: 720 },
    acceptDownloads: true,
    // The page's policy forbids eval, which playwright's polling of a
    // string expression needs; the policy itself is checked by a test.
    bypassCSP: true,
    timezoneId: opts.timezone || undefined,
    downloadsPath: opts.downloads || undefined,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--enable-precise-memory-info",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on("console", m => { if (m.type() === "error" || m.type() === "warning") console.error(`console.${m.type()}: ${m.text()}`); });
  page.on("pageerror", e => console.error(`pageerror: ${e.message}`));
  let cdp = null;

  const run = async c => {
    switch (c.op) {
      case "open": { const r = await page.goto(c.url, { timeout: TIMEOUT_MS }); return r ? r.status() : 0; }
      case "wait": await page.waitForFunction(c.js, null, { timeout: TIMEOUT_MS, polling: "raf" }); return true;
      case "eval": return await page.evaluate(c.js);
      case "click": await page.locator(c.sel).nth(c.nth || 0).click(); return true;
      case "fill": { const l = page.locator(c.sel); await l.fill(c.text); await l.press("Enter"); return true; }
      case "press": await page.keyboard.press(c.key); return true;
      case "select": await page.locator(c.sel).selectOption(c.value); return true;
      case "wheel": {
        const box = await page.locator("#log").boundingBox();
        await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
        await page.mouse.wheel(0, c.dy);
        return true;
      }
      case "download": {
        const [d] = await Promise.all([page.waitForEvent("download", { timeout: TIMEOUT_MS }), page.locator(c.sel).click()]);
        const path = await d.path();
        return { name: d.suggestedFilename(), text: readFileSync(path, "utf8") };
      }
      case "shot": await page.screenshot({ path: c.path, fullPage: !!c.full }); return c.path;
      case "scheme": await page.emulateMedia({ colorScheme: c.value }); return true;
      case "reload": await page.reload({ timeout: TIMEOUT_MS }); return true;
      case "heap": {
        if (!cdp) { cdp = await context.newCDPSession(page); await cdp.send("Performance.enable"); }
        const { metrics } = await cdp.send("Performance.getMetrics");
        return Object.fromEntries(metrics.map(m => [m.name, m.value]));
      }
      case "throttle": {
        if (!cdp) { cdp = await context.newCDPSession(page); await cdp.send("Performance.enable"); }
        await cdp.send("Emulation.setCPUThrottlingRate", { rate: c.rate });
        return true;
      }
      case "header": {
        return await page.evaluate(async ([u, n]) => (await fetch(u)).headers.get(n), [c.url, c.name]);
      }
      default: throw new Error(`unknown op ${c.op}`);
    }
  };

  try {
    for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
      if (!line.trim()) continue;
      let c;
      try { c = JSON.parse(line); } catch (e) { out(`ERR bad command ${JSON.stringify(line)}`); continue; }
      try {
        const v = await run(c);
        out(`OK ${JSON.stringify(v === undefined ? null : v)}`);
      } catch (e) {
        out(`ERR ${c.op}: ${e.message.split("\n")[0]} | ${await describe(page)}`);
      }
    }
  } finally {
    await context.close().catch(() => {});
    if (ownProfile) rmSync(profile, { recursive: true, force: true });
  }
}

async function describe(page) {
  try {
    const s = await page.evaluate(() => ({
      status: document.getElementById("status")?.textContent,
      rows: Array.from(document.querySelectorAll("#spacer > div"), d => d.textContent).slice(-8),
      sources: Array.from(document.querySelectorAll("[data-testid=source]"), d => d.textContent),
      url: location.href,
    }));
    return JSON.stringify(s);
  } catch (e) {
    return `(page state unavailable: ${e.message.split("\n")[0]})`;
  }
}

main().then(() => process.exit(0), e => { console.error(`viewer.mjs: ${e.message}`); process.exit(1); });
