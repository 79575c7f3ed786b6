// Baseline: chokidar + Socket.IO. Every new line of every file in --dir is
// emitted to every connected client as a `line` event (`io.emit`). Default
// Socket.IO options (path /socket.io/, polling and websocket transports);
// GET /readyz answers 200 once the initial scan is done.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const { parseArgs, announce } = require('./cli');
const { follow } = require('./follow');

const opts = parseArgs(process.argv.slice(2));
let ready = false;
const server = http.createServer((req, res) => {
  res.writeHead(ready || req.url !== '/readyz' ? 200 : 503);
  res.end(req.url === '/readyz' && !ready ? 'starting\n' : 'ok\n');
});
const io = new Server(server);

follow(
  opts.dir,
  (line) => io.emit('line', line),
  () => {
    ready = true;
  },
);

server.listen(opts.port, opts.host, () => announce(server));
