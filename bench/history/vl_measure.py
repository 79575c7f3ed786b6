#!/usr/bin/env python3
"""Measures a running VictoriaLogs for the history benchmark (bench/history/).

Called by bench/history/victorialogs.sh, which builds and starts the server
and restarts it on request (--restart-cmd). Python standard library only.

Steps:
  1. ingest the data file through /insert/jsonline in one streamed request;
     CPU of the victoria-logs process (utime+stime of /proc/PID/stat) and wall
     time up to the end of the request, up to the end of /internal/force_flush,
     and up to the end of the background merges that follow (vl_active_merges
     all 0 and the process' CPU idle);
  2. bytes on disk (du -sb of -storageDataPath) after the flush, then after
     /internal/force_merge has finished (vl_active_force_merges 0);
  3. restart of the server on the same data (its in-process caches empty; the
     files stay in the page cache), then each query --runs times in turn:
     the first run is reported apart as "cold" (first after the restart).

Writes one JSON document (--out).
"""

import argparse
import http.client
import json
import re
import os
import platform
import signal
import socket
import statistics
import subprocess
import time
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds (user + system) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def proc_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def machine_busy():
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / CLK_TCK


def self_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """CPU of the server, of this client and of everything else, and wall time."""

    def __init__(self, pid):
        self.pid = pid
        self.t = time.perf_counter()
        self.cpu = proc_cpu(pid)
        self.busy = machine_busy()
        self.me = self_cpu()

    def read(self):
        wall = time.perf_counter() - self.t
        cpu = proc_cpu(self.pid) - self.cpu
        busy = machine_busy() - self.busy
        me = self_cpu() - self.me
        return {
            "wall_s": round(wall, 4),
            "server_cpu_s": round(cpu, 3),
            "client_cpu_s": round(me, 3),
            "other_cpu_s": round(max(0.0, busy - cpu - me), 3),
        }


def wait_quiet(max_s, threshold=0.15):
    """Waits up to max_s for a quiet machine (<= threshold of all cores busy
    over 1 s): other builds on 2 cores move every figure. Returns what it saw."""
    t = time.time()
    busy = None
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        busy = (machine_busy() - b0) / os.cpu_count()
        if busy <= threshold or time.time() - t >= max_s:
            break
    return {"waited_s": round(time.time() - t, 1), "busy_fraction_last_s": round(busy, 3), "quiet": busy <= threshold}


def du(path):
    out = subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


class Vl:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def conn(self, timeout=600):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout, blocksize=1 << 20)

    def request(self, method, path, params=None, body=None, headers=None):
        """Returns (status, body bytes, seconds from send to the last byte)."""
        c = self.conn()
        h = dict(headers or {})
        if params is not None and method == "POST" and body is None:
            body = urllib.parse.urlencode(params)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        elif params is not None:
            path = path + "?" + urllib.parse.urlencode(params)
        t = time.perf_counter()
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        secs = time.perf_counter() - t
        c.close()
        return r.status, data, secs

    def metrics(self):
        _, data, _ = self.request("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line.startswith("#") or not line:
                continue
            name, _, val = line.rpartition(" ")
            try:
                out[name] = float(val)
            except ValueError:
                pass
        return out

    def wait_up(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            try:
                st, _, _ = self.request("GET", "/health")
                if st == 200:
                    return
            except (ConnectionError, socket.error, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise SystemExit("victoria-logs did not answer /health")


def metric_sum(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


def wait_settled(vl, pid, timeout=300):
    """Waits until the data is in file parts (no in-memory part left: they are
    written out every -inmemoryDataFlushInterval, 5 s), no merge is active and
    the server used < 2% CPU over 1 s, twice in a row."""
    end = time.time() + timeout
    quiet = 0
    while time.time() < end:
        c0 = proc_cpu(pid)
        time.sleep(1.0)
        used = proc_cpu(pid) - c0
        m = vl.metrics()
        busy = metric_sum(m, "vl_active_merges") + m.get("vl_active_force_merges", 0)
        busy += m.get('vl_storage_parts{type="storage/inmemory"}', 0)
        quiet = quiet + 1 if (used < 0.02 and busy == 0) else 0
        if quiet >= 2:
            return True
    return False


def ingest(vl, pid, data_path, insert_params, lines, start_ns, end_ns):
    size = os.path.getsize(data_path)
    m0 = vl.metrics()
    meter = Meter(pid)
    path = "/insert/jsonline?" + urllib.parse.urlencode(insert_params)
    with open(data_path, "rb") as f:
        st, body, _ = vl.request(
            "POST", path, body=f,
            headers={"Content-Type": "application/stream+json", "Content-Length": str(size)},
        )
    if st // 100 != 2:
        raise SystemExit(f"ingest failed: HTTP {st}: {body[:500]!r}")
    after_request = meter.read()
    st, body, flush_secs = vl.request("GET", "/internal/force_flush")
    if st != 200:
        raise SystemExit(f"force_flush failed: HTTP {st}: {body[:500]!r}")
    after_flush = meter.read()
    # The insert path still holds buffered rows for up to ~1 s after the
    # response: flush and count until every line is searchable.
    polls = 0
    while True:
        polls += 1
        vl.request("GET", "/internal/force_flush")
        st, body, _ = vl.request("POST", "/select/logsql/query", params={
            "query": "* | count() n", "start": str(start_ns // 1_000_000_000), "end": str(end_ns // 1_000_000_000)})
        n = int(json.loads(body)["n"]) if st == 200 and body.strip() else -1
        if n == lines:
            break
        if polls > 600:
            raise SystemExit(f"only {n} of {lines} lines searchable after 60 s")
        time.sleep(0.1)
    after_searchable = meter.read()
    rss_after_flush = proc_rss(pid)
    settled = wait_settled(vl, pid)
    after_settle = meter.read()
    # The 2 quiet seconds of the wait are not ingest time.
    m1 = vl.metrics()
    rows = m1.get('vl_rows_ingested_total{type="jsonline"}', 0) - m0.get('vl_rows_ingested_total{type="jsonline"}', 0)
    return {
        "request": path,
        "content_type": "application/stream+json",
        "body_bytes": size,
        "rows_ingested": int(rows),
        "rows_dropped": {k: v for k, v in m1.items() if k.startswith("vl_rows_dropped_total") and v},
        "until_response": after_request,
        "force_flush_s": round(flush_secs, 4),
        "until_flushed": after_flush,
        "until_searchable": after_searchable,
        "searchable_polls": polls,
        "until_persisted": after_settle,
        "persisted": settled,
        "rss_after_flush_bytes": rss_after_flush,
        "rss_peak_bytes": proc_hwm(pid),
    }


FORCE_MERGE_DONE = re.compile(r"forced merge for partition_prefix=.* has been successfully finished in ([0-9.]+) seconds")


def force_merge(vl, pid, log, timeout=1200):
    """/internal/force_merge runs in the background: waits for the server's
    log line that it finished (-loggerLevel=INFO), which gives its duration."""
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        log_pos = f.tell()
    meter = Meter(pid)
    st, body, _ = vl.request("GET", "/internal/force_merge")
    if st != 200:
        return {"error": f"HTTP {st}: {body[:200]!r}"}
    end = time.time() + timeout
    secs = None
    while time.time() < end and secs is None:
        time.sleep(0.05)
        with open(log, "rb") as f:
            f.seek(log_pos)
            m = FORCE_MERGE_DONE.search(f.read().decode(errors="replace"))
        if m:
            secs = float(m.group(1))
    r = meter.read()
    r["finished"] = secs is not None
    r["merge_s_logged"] = secs
    return r




def restart(pid, cmd, log, pid_file):
    """Stops the server (SIGTERM, it flushes and exits) and starts it again."""
    os.kill(pid, signal.SIGTERM)
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # A child of the shell that started it: it stays a zombie until reaped.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise SystemExit("victoria-logs did not stop")
    with open(log, "ab") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    with open(pid_file, "w") as f:
        f.write(str(p.pid))
    return p.pid


def check_result(q, data):
    """Parses a response and checks it against the generator's expected answers."""
    kind = q["check"]
    exp = q["expect"]
    if kind == "rows":
        rows = [json.loads(x) for x in data.splitlines() if x.strip()]
        got = {"rows": len(rows)}
        ok = len(rows) == exp
    elif kind == "count":
        rows = [json.loads(x) for x in data.splitlines() if x.strip()]
        n = int(next(iter(rows[0].values()))) if rows else 0
        got = {"count": n}
        ok = n == exp
    elif kind == "buckets":
        rows = [json.loads(x) for x in data.splitlines() if x.strip()]
        total = sum(int(r["hits"]) for r in rows)
        levels = sorted({r.get("level", "") for r in rows})
        minutes = len({r["_time"] for r in rows})
        got = {"rows": len(rows), "total": total, "levels": levels, "minutes": minutes}
        ok = total == exp["total"] and len(rows) == exp["points"]
    elif kind == "matrix":
        doc = json.loads(data)
        series = doc["data"]["result"]
        points = sum(len(s["values"]) for s in series)
        total = sum(int(float(v[1])) for s in series for v in s["values"])
        got = {
            "series": len(series),
            "labels": sorted(json.dumps(s["metric"], sort_keys=True) for s in series),
            "points": points,
            "total": total,
        }
        ok = total == exp["total"] and points == exp["points"]
    else:
        raise ValueError(kind)
    return got, ok


def run_query(vl, pid, q, runs):
    times = []
    results = []
    oks = []
    cpu = []
    other = []
    for i in range(runs):
        meter = Meter(pid)
        st, data, secs = vl.request("POST", q["path"], params=q["params"])
        load = meter.read()
        if st != 200:
            raise SystemExit(f"query {q['name']} failed: HTTP {st}: {data[:500]!r}")
        got, ok = check_result(q, data)
        times.append(secs * 1000)
        cpu.append(round(load["server_cpu_s"] * 1000, 1))
        other.append(round(load["other_cpu_s"] * 1000, 1))
        results.append(got)
        oks.append(ok)
        if i == 0:
            response_bytes = len(data)
    # One more, untimed run with the query_stats pipe: what the storage read.
    per_query = None
    if q["path"] == "/select/logsql/query":
        p = dict(q["params"], query=q["logsql"] + " | query_stats")
        st, data, _ = vl.request("POST", q["path"], params=p)
        if st == 200 and data.strip():
            per_query = json.loads(data.splitlines()[-1])
    warm = times[1:] or times
    return {
        "logsql": q["logsql"],
        "semantics": q["semantics"],
        "http": {
            "method": "POST",
            "path": q["path"],
            "form": q["params"],
            "curl": "curl -s http://HOST:PORT" + q["path"] + "".join(
                f" --data-urlencode {shell_quote(k + '=' + v)}" for k, v in q["params"].items()
            ),
        },
        "expected": q["expect"],
        "result": results[0],
        "all_runs_correct": all(oks) and all(r == results[0] for r in results),
        "runs_ms": [round(t, 2) for t in times],
        "server_cpu_ms_per_run": cpu,
        "other_cpu_ms_per_run": other,
        "cold_ms": round(times[0], 2),
        "min_ms": round(min(times), 2),
        "median_ms": round(statistics.median(times), 2),
        "warm_min_ms": round(min(warm), 2),
        "warm_median_ms": round(statistics.median(warm), 2),
        "response_bytes": response_bytes,
        "query_stats_extra_run": per_query,
    }


def shell_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def rfc3339(ns):
    secs, frac = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", t)
    return base + (f".{frac:09d}" if frac else "") + "Z"


def queries(summary):
    start, end = summary["start_ns"], summary["end_ns"]
    exp = summary["expected"]
    b0, b1 = exp["b_range_ns"]
    whole = {"start": rfc3339(start), "end": rfc3339(end)}
    last_hour = {"start": rfc3339(b0), "end": rfc3339(b1)}
    q = []

    def add(name, logsql, params, check, expect, semantics, path="/select/logsql/query"):
        p = {"query": logsql}
        p.update(params)
        q.append({"name": name, "logsql": logsql, "path": path, "params": p, "check": check,
                  "expect": expect, "semantics": semantics})

    add("a_needle", '{namespace="bench"} *"needle-7f3a9c"*', whole, "rows", exp["a_marker_hits"],
        'substring filter *"..."*: case-sensitive substring anywhere in _msg, as LogQL |= "needle-7f3a9c"; returns the matching log entries')
    add("a_needle_phrase", '{namespace="bench"} "needle-7f3a9c"', whole, "rows", exp["a_marker_hits"],
        "phrase filter: the words needle, 7f3a9c next to each other (word boundaries); same hits here because the marker stands between non-word characters; VictoriaLogs' indexed path (bloom filters of words); not LogQL's semantics, shown for reference")
    add("b_pod07_error", '{pod="pod-07"} *"error"*', last_hour, "rows", exp["b_pod07_error_substring_last_hour"],
        'substring filter: case-sensitive substring "error" anywhere in _msg (matches errors=0, "level":"error", upstream error; not ERROR), as LogQL |= "error"; returns the matching log entries; the word filter `error` would give fewer (whole words only)')
    add("b_pod07_error_sorted", '{pod="pod-07"} *"error"* | sort by (_time desc)', last_hour, "rows",
        exp["b_pod07_error_substring_last_hour"],
        "the same lines newest first, as Loki's query_range returns them (direction=backward); /select/logsql/query returns them in no set order otherwise")
    add("b_pod07_error_count", '{pod="pod-07"} *"error"* | count()', last_hour, "count", exp["b_pod07_error_substring_last_hour"],
        "the same filter, only the count returned")
    add("c_level_per_minute", '{namespace="bench"} | stats by (level, _time:1m) count() hits', whole, "buckets",
        {"total": exp["c_total"], "points": exp["c_level_minute_points"]},
        "count of entries per (level field, 1-minute bucket) over the 6 h; one row per non-empty bucket")
    add("c_level_per_minute_range", '{namespace="bench"} | stats by (level) count() hits',
        dict(whole, step="1m"), "matrix", {"total": exp["c_total"], "points": exp["c_level_minute_points"]},
        "the same through /select/logsql/stats_query_range (Prometheus matrix, as Loki's query_range of a metric query): step 1m",
        path="/select/logsql/stats_query_range")
    return q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid-file", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--storage-kind", required=True)
    ap.add_argument("--server-cmd", required=True, help="JSON array: the server's command line, to restart it on the same data")
    ap.add_argument("--server-log", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait at most for a quiet machine before ingest and before the queries")
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", default="{}", help="JSON object merged into the output")
    a = ap.parse_args()

    summary = json.load(open(a.summary))
    vl = Vl(a.host, a.port)
    pid = int(open(a.pid_file).read())
    vl.wait_up()

    insert_params = {
        "_stream_fields": "namespace,pod,container,file",
        "_msg_field": "line",
        "_time_field": "ts",
    }
    quiet_before_ingest = wait_quiet(a.quiet_wait)
    ing = ingest(vl, pid, a.data, insert_params, summary["lines"], summary["start_ns"], summary["end_ns"])
    lines = summary["lines"]
    cpu_flushed = ing["until_searchable"]["server_cpu_s"]
    cpu_settled = ing["until_persisted"]["server_cpu_s"]
    ing["quiet_wait"] = quiet_before_ingest
    ing["lines_per_cpu_s_until_searchable"] = round(lines / cpu_flushed) if cpu_flushed else None
    ing["lines_per_cpu_s_until_persisted"] = round(lines / cpu_settled) if cpu_settled else None
    ing["lines_per_wall_s_until_searchable"] = round(lines / ing["until_searchable"]["wall_s"])
    ing["mb_per_cpu_s_until_searchable"] = round(summary["bytes"] / 1e6 / cpu_flushed, 1) if cpu_flushed else None
    print(json.dumps({"ingest": ing}, indent=1), flush=True)
    if ing["rows_ingested"] != lines:
        raise SystemExit(f"ingested {ing['rows_ingested']} rows, the file has {lines}")

    # force_flush makes the data searchable (in-memory parts); the bytes are
    # read once they are written out to file parts (ingest waited for it).
    disk = {"after_flush_bytes": du(a.storage)}
    disk["after_flush_bytes_per_line"] = round(disk["after_flush_bytes"] / lines, 2)
    m = vl.metrics()
    disk["metrics_after_flush"] = {k: v for k, v in m.items() if k.startswith(("vl_data_size_bytes", "vl_storage_parts", "vl_partitions"))}
    merge = force_merge(vl, pid, a.server_log)
    disk["force_merge"] = merge
    wait_settled(vl, pid, timeout=60)
    disk["after_force_merge_bytes"] = du(a.storage)
    disk["after_force_merge_bytes_per_line"] = round(disk["after_force_merge_bytes"] / lines, 2)
    disk["compression_ratio_vs_jsonl_after_merge"] = round(summary["bytes"] / disk["after_force_merge_bytes"], 2)
    m = vl.metrics()
    disk["metrics_after_force_merge"] = {k: v for k, v in m.items() if k.startswith(("vl_data_size_bytes", "vl_storage_parts", "vl_partitions"))}
    print(json.dumps({"disk": disk}, indent=1), flush=True)

    # Restart: empty in-process caches for the "cold" first runs.
    t = time.perf_counter()
    pid = restart(pid, json.loads(a.server_cmd), a.server_log, a.pid_file)
    vl.wait_up()
    restart_s = time.perf_counter() - t
    rss_idle = proc_rss(pid)

    results = {}
    quiet_before_queries = wait_quiet(a.quiet_wait)
    meter = Meter(pid)
    for q in queries(summary):
        r = run_query(vl, pid, q, a.runs)
        results[q["name"]] = r
        print(q["name"], json.dumps({k: r[k] for k in ("result", "all_runs_correct", "runs_ms")}), flush=True)
    query_load = meter.read()

    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    out = {
        "system": "VictoriaLogs",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu_model": cpu_model,
            "cpus": os.cpu_count(),
            "mem_total_bytes": mem_total,
            "kernel": platform.release(),
        },
        "data": summary,
        "storage_kind": a.storage_kind,
        "ingest": ing,
        "disk": disk,
        "restart_s": round(restart_s, 3),
        "rss_after_restart_bytes": rss_idle,
        "queries": results,
        "queries_machine_load": query_load,
        "queries_quiet_wait": quiet_before_queries,
        "all_queries_correct": all(r["all_runs_correct"] for r in results.values()),
    }
    out.update(json.loads(a.meta))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print("wrote", a.out)
    if not out["all_queries_correct"]:
        raise SystemExit("some query gave a wrong answer")


if __name__ == "__main__":
    main()
