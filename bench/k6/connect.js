// k6 client of the connection-scale cross-check (run by `ls-k6 --scenario
// connect`). VUS VUs each open CONNS/VUS WebSockets to URL one after the
// other (the next when the previous is open), so at most VUS handshakes are
// in flight, and hold them until the server goes away (the tool stops it
// after reading its memory) or MAX_SECS. k6's own `ws_connecting` metric is
// the connect + handshake time of each.
//
// env: URL, CONNS, VUS, MAX_SECS (default 120), SUMMARY
import { WebSocket } from 'k6/experimental/websockets';
import { Counter } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';

const URL = __ENV.URL;
const CONNS = parseInt(__ENV.CONNS, 10);
const VUS = parseInt(__ENV.VUS || '1', 10);
const MAX_SECS = parseFloat(__ENV.MAX_SECS || '120');

const opened = new Counter('conns_opened');
const failed = new Counter('conns_failed');

export const options = {
  scenarios: {
    connect: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(MAX_SECS) + 10}s`,
    },
  },
  summaryTrendStats: ['min', 'med', 'avg', 'p(90)', 'p(99)', 'max', 'count'],
};

export default function () {
  const vu = __VU - 1;
  const mine = Math.floor(CONNS / VUS) + (vu < CONNS % VUS ? 1 : 0);
  const sockets = [];
  let ended = 0;
  let timer = null;
  const next = () => {
    if (sockets.length === mine) {
      console.log('k6-vu-done');
      return;
    }
    const ws = new WebSocket(URL);
    sockets.push(ws);
    let first = true;
    let gone = false;
    const step = (ok) => {
      if (first) {
        first = false;
        (ok ? opened : failed).add(1);
        next();
      }
    };
    // The iteration ends when no timer is pending: drop the safety timer
    // once every socket is gone.
    const end = () => {
      step(false);
      if (!gone) {
        gone = true;
        ended += 1;
        if (ended === mine && timer !== null) {
          clearTimeout(timer);
        }
      }
    };
    ws.onopen = () => step(true);
    ws.onerror = end;
    ws.onclose = end;
  };
  next();
  timer = setTimeout(() => sockets.forEach((s) => s.close()), MAX_SECS * 1000);
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
