// Follows every file of a folder the way Node.js guides do it: chokidar
// watches the folder; on `change`, read the bytes from the last offset to the
// current size, split them into lines, keep the unfinished last piece for
// the next read. Files present at start are followed from their end, files
// created later from their start; a file that shrank is read again from 0.
'use strict';

const fs = require('fs');
const chokidar = require('chokidar');

function follow(dir, onLine, onReady) {
  const files = new Map(); // path -> { offset, rest, reading, again }
  let ready = false;

  function read(path) {
    const f = files.get(path);
    if (!f) return;
    if (f.reading) {
      f.again = true;
      return;
    }
    fs.stat(path, (err, st) => {
      if (err) return;
      if (st.size < f.offset) {
        f.offset = 0;
        f.rest = '';
      }
      if (st.size === f.offset) return;
      f.reading = true;
      const stream = fs.createReadStream(path, { start: f.offset, end: st.size - 1, encoding: 'utf8' });
      f.offset = st.size;
      stream.on('data', (chunk) => {
        const parts = (f.rest + chunk).split('\n');
        f.rest = parts.pop();
        for (const line of parts) onLine(line, path);
      });
      const done = () => {
        f.reading = false;
        if (f.again) {
          f.again = false;
          read(path);
        }
      };
      stream.on('end', done);
      stream.on('error', done);
    });
  }

  const watcher = chokidar.watch(dir, { alwaysStat: true, ignoreInitial: false });
  watcher.on('add', (path, stats) => {
    files.set(path, { offset: ready ? 0 : (stats ? stats.size : 0), rest: '', reading: false, again: false });
    if (ready) read(path);
  });
  watcher.on('change', read);
  watcher.on('unlink', (path) => files.delete(path));
  watcher.on('ready', () => {
    ready = true;
    onReady();
  });
  return watcher;
}

module.exports = { follow };
