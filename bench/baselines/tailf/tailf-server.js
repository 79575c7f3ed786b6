// Baseline: `tail -F` piped to HTTP. Every request (other than /readyz)
// spawns `tail -F -n0 -q FILES` and relays its output as a chunked
// `text/plain` response until the client goes away. FILES are the regular
// files of --dir when the request arrives, or `?file=NAME` alone. No
// dependencies beyond Node.js itself.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');
const { spawn } = require('child_process');
const { parseArgs, announce } = require('../node/cli');

const opts = parseArgs(process.argv.slice(2));

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/readyz') {
    res.end('ok\n');
    return;
  }
  const one = url.searchParams.get('file');
  let files;
  try {
    files = one
      ? [path.join(opts.dir, path.basename(one))]
      : fs.readdirSync(opts.dir).sort().map((n) => path.join(opts.dir, n))
          .filter((p) => fs.statSync(p).isFile());
  } catch (e) {
    res.writeHead(500);
    res.end(`${e.message}\n`);
    return;
  }
  if (files.length === 0) {
    res.writeHead(404);
    res.end('no files to follow\n');
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.flushHeaders();
  const tail = spawn('tail', ['-F', '-n0', '-q', ...files], { stdio: ['ignore', 'pipe', 'ignore'] });
  tail.stdout.pipe(res);
  tail.on('exit', () => res.end());
  res.on('close', () => tail.kill());
});

server.listen(opts.port, opts.host, () => announce(server));
