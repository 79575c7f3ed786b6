#!/usr/bin/env node
// A WebSocket client that negotiates permessage-deflate, as Node.js
// programs do it (the `ws` package, pinned in package.json), for
// sidecar/tests/compression.rs.
//
//   node ws-client.mjs URL [--send JSON]... [--lines N] [--no-deflate]
//
// It offers permessage-deflate (unless --no-deflate) and compresses every
// message it sends (threshold 0), so the server must inflate them.
// Protocol on stdout, one line each:
//   EXTENSIONS <the server's Sec-WebSocket-Extensions answer, or nothing>
//   MSG <type>     every protocol message but records
//   LINE <line>    every record's line, in order
//   DONE           after N lines (then it closes with 1000 and exits 0)
//   CLOSED <code> <reason>   when the server closes first (exit 1)
// Bounded by PAGE_TIMEOUT_MS (default 30000): exit 1 on timeout or error.

import WebSocket from "ws";

const usage = "usage: node ws-client.mjs URL [--send JSON]... [--lines N] [--no-deflate]";
const o = { url: "", send: [], lines: Infinity, deflate: true };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => {
    if (i + 1 >= argv.length) fail(2, `${a} needs a value\n${usage}`);
    return argv[++i];
  };
  if (a === "--send") o.send.push(value());
  else if (a === "--lines") o.lines = Number(value());
  else if (a === "--no-deflate") o.deflate = false;
  else if (!a.startsWith("-") && !o.url) o.url = a;
  else fail(2, `unexpected argument ${JSON.stringify(a)}\n${usage}`);
}
if (!o.url) fail(2, usage);

function fail(code, msg) {
  console.error(`ws-client.mjs: ${msg}`);
  process.exit(code);
}

const timer = setTimeout(
  () => fail(1, `timed out after ${seen} lines`),
  Number(process.env.PAGE_TIMEOUT_MS || 30000),
);
let seen = 0;
const ws = new WebSocket(o.url, {
  perMessageDeflate: o.deflate ? { threshold: 0 } : false,
});
ws.on("upgrade", (res) => {
  console.log(`EXTENSIONS ${res.headers["sec-websocket-extensions"] || ""}`);
});
ws.on("open", () => {
  for (const m of o.send) ws.send(m);
});
ws.on("message", (data) => {
  const m = JSON.parse(data.toString("utf8"));
  if (m.type !== "records") {
    console.log(`MSG ${m.type}${m.code ? " " + m.code : ""}`);
    return;
  }
  for (const r of m.records) {
    console.log(`LINE ${r.line}`);
    if (++seen === o.lines) {
      console.log("DONE");
      clearTimeout(timer);
      ws.close(1000);
      return;
    }
  }
});
ws.on("close", (code, reason) => {
  if (seen < o.lines) {
    console.log(`CLOSED ${code} ${reason.toString("utf8")}`);
    process.exit(1);
  }
  process.exit(0);
});
ws.on("error", (e) => fail(1, e.message));
