// Command line shared by the baseline servers, the same as `logstream serve`:
// `--dir DIR --listen HOST:PORT` (port 0 picks a free one); `--deflate`
// turns on permessage-deflate where the server has it (ws-server.js). Once listening,
// a server prints `listening on http://HOST:PORT` on stdout, which is what the
// bench tools wait for.
'use strict';

function parseArgs(argv) {
  const opts = { dir: null, listen: '127.0.0.1:0', deflate: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--dir') opts.dir = argv[++i];
    else if (a === '--listen') opts.listen = argv[++i];
    else if (a === '--deflate') opts.deflate = true;
    else throw new Error(`unknown argument ${a}: usage --dir DIR --listen HOST:PORT [--deflate]`);
  }
  if (!opts.dir) throw new Error('--dir DIR is required');
  const m = /^(.*):(\d+)$/.exec(opts.listen || '');
  if (!m) throw new Error(`--listen wants HOST:PORT, got ${opts.listen}`);
  opts.host = m[1];
  opts.port = Number(m[2]);
  return opts;
}

function announce(server) {
  const a = server.address();
  process.stdout.write(`listening on http://${a.address}:${a.port}\n`);
}

module.exports = { parseArgs, announce };
