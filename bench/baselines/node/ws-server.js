// Baseline: chokidar + `ws`. Every new line of every file in --dir is sent to
// every connected WebSocket client as one text message (the broadcast loop of
// the `ws` README). Any path upgrades; GET /readyz answers 200 once the
// initial scan is done. `--deflate`: `perMessageDeflate: true`, the README's
// switch (a zlib context per connection, each message compressed per client).
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');
const { parseArgs, announce } = require('./cli');
const { follow } = require('./follow');

const opts = parseArgs(process.argv.slice(2));
let ready = false;
const server = http.createServer((req, res) => {
  res.writeHead(ready || req.url !== '/readyz' ? 200 : 503);
  res.end(req.url === '/readyz' && !ready ? 'starting\n' : 'ok\n');
});
const wss = new WebSocketServer({ server, perMessageDeflate: opts.deflate });

follow(
  opts.dir,
  (line) => {
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) client.send(line);
    });
  },
  () => {
    ready = true;
  },
);

server.listen(opts.port, opts.host, () => announce(server));
