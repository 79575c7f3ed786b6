// k6 client of the latency cross-check (run by `ls-k6 --scenario latency`).
// Each VU opens one WebSocket to URL and, for every `lat SEQ MONO_NS WALL_NS`
// line, records receive time − WALL_NS. The receive time is the message
// event's `timestamp` (wall clock in ms with µs digits, taken by k6's reader
// when the frame arrived; `Date.now()` has only ms). The writer and k6 share
// the machine's wall clock. A VU closes after line TOTAL-1 or after MAX_SECS.
//
// env: URL, TOTAL, WARMUP (lines not counted, default 1), VUS (default 1),
//      MAX_SECS (default 120), SUMMARY (path of the JSON summary)
import { WebSocket } from 'k6/experimental/websockets';
import { Counter, Trend } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';

const URL = __ENV.URL;
const TOTAL = parseInt(__ENV.TOTAL, 10);
const WARMUP = parseInt(__ENV.WARMUP || '1', 10);
const VUS = parseInt(__ENV.VUS || '1', 10);
const MAX_SECS = parseFloat(__ENV.MAX_SECS || '120');

const latency = new Trend('line_latency', true);
const lines = new Counter('lines_received');
const gaps = new Counter('gap_notices');

export const options = {
  scenarios: {
    latency: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(MAX_SECS) + 10}s`,
    },
  },
  summaryTrendStats: ['min', 'med', 'avg', 'p(90)', 'p(99)', 'p(99.9)', 'max', 'count'],
};

// WALL_NS has 19-20 digits, beyond a double's exact range: split it.
function wallMs(ns) {
  return Number(ns.slice(0, -6)) + Number(ns.slice(-6)) / 1e6;
}

function onLine(line, now, done) {
  if (line.startsWith('{')) {
    try {
      line = JSON.parse(line).line || '';
    } catch (_) {
      return;
    }
  }
  if (!line.startsWith('lat ')) {
    return;
  }
  const f = line.split(' ');
  const seq = parseInt(f[1], 10);
  if (seq >= WARMUP) {
    latency.add(now - wallMs(f[3]));
  }
  lines.add(1);
  if (seq + 1 >= TOTAL) {
    done();
  }
}

export default function () {
  const ws = new WebSocket(URL);
  const timer = setTimeout(() => ws.close(), MAX_SECS * 1000);
  const done = () => {
    clearTimeout(timer);
    ws.close();
  };
  ws.onopen = () => console.log('k6-open');
  ws.onerror = (e) => console.log(`k6-error ${e.error}`);
  ws.onmessage = (e) => {
    const now = e.timestamp;
    for (const l of String(e.data).split('\n')) {
      if (l.startsWith('# logstream:')) {
        if (l.includes('"type":"gap"')) {
          gaps.add(1);
        }
      } else if (l.length > 0) {
        onLine(l, now, done);
      }
    }
  };
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
