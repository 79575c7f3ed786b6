#!/usr/bin/env python3
"""JSON checks for tests/e2e/kind.sh (standard library only).

Subcommands (exit 0 when the check holds, 1 with a reason on stderr):

  pods-converged N [native] < pods.json
      exactly N live pods (no deletionTimestamp), none terminating, each Ready
      and carrying exactly one logstream sidecar: a native sidecar (init
      container with restartPolicy Always) or, unless "native" is given, a
      plain container; with a read-only root filesystem, no privilege
      escalation and every volume mounted read-only.
      Prints the pod names, one a line.
  pods-without-sidecar N < pods.json
      exactly N live, Ready pods, none terminating, none with a logstream
      container, init container or logstream.dev/stream label.
  records-from-pods FILE POD=MARKER...
      FILE holds NDJSON records; each MARKER line is present, its record
      names POD.
  rollout FILE PREFIX EXPECTED...
      FILE holds the NDJSON records `logstream tail --json` printed across a
      rollout. Each EXPECTED file lists, one a line, "POD MARKER" for the
      marker lines that were written (kubectl exec succeeded) in POD before it
      ended. Checks: every expected marker arrived exactly once and from its
      pod; no line starting with PREFIX arrived twice; per source (sid) the
      sequence numbers increase by one without duplicates or holes.
"""

import json
import sys
from collections import Counter, defaultdict

SIDECAR = "logstream"


def fail(msg):
    print(f"check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def live_pods(doc):
    items = doc.get("items", [])
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    terminating = [p["metadata"]["name"] for p in items if p["metadata"].get("deletionTimestamp")]
    return live, terminating


def ready(pod):
    conds = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def sidecars(pod):
    spec = pod["spec"]
    native = [c for c in spec.get("initContainers", []) if c["name"] == SIDECAR]
    plain = [c for c in spec.get("containers", []) if c["name"] == SIDECAR]
    return native, plain


def pods_converged(want, native_only):
    live, terminating = live_pods(json.load(sys.stdin))
    if terminating:
        fail(f"pods still terminating: {terminating}")
    if len(live) != want:
        fail(f"{len(live)} live pods, want {want}")
    for p in live:
        name = p["metadata"]["name"]
        native, plain = sidecars(p)
        if len(native) + len(plain) != 1:
            fail(f"{name}: {len(native)} native + {len(plain)} plain logstream sidecars, want exactly 1")
        if native_only and not native:
            fail(f"{name}: the sidecar is a plain container, not a native sidecar")
        c = (native or plain)[0]
        if native and c.get("restartPolicy") != "Always":
            fail(f"{name}: init container logstream without restartPolicy Always")
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation", True):
            fail(f"{name}: sidecar securityContext not hardened: {sc}")
        mounts = c.get("volumeMounts", [])
        # Everything read-only but the sidecar's own state emptyDir (its
        # file positions), which the app does not mount.
        writable = [m for m in mounts if not m.get("readOnly")]
        if not mounts or any(m.get("name") != "logstream-state" for m in writable):
            fail(f"{name}: sidecar mounts not all read-only: {mounts}")
        app_mounts = [m.get("name") for x in p["spec"].get("containers", []) if x.get("name") != "logstream" for m in x.get("volumeMounts", [])]
        if "logstream-state" in app_mounts:
            fail(f"{name}: an app container mounts the sidecar's state volume")
        if p["metadata"].get("labels", {}).get("logstream.dev/stream") is None:
            fail(f"{name}: no logstream.dev/stream label")
        if not ready(p):
            fail(f"{name}: not Ready")
    for p in live:
        print(p["metadata"]["name"])


def pods_without_sidecar(want):
    live, terminating = live_pods(json.load(sys.stdin))
    if terminating:
        fail(f"pods still terminating: {terminating}")
    if len(live) != want:
        fail(f"{len(live)} live pods, want {want}")
    for p in live:
        name = p["metadata"]["name"]
        native, plain = sidecars(p)
        if native or plain:
            fail(f"{name}: injected although no LogStream selects it")
        if "logstream.dev/stream" in p["metadata"].get("labels", {}):
            fail(f"{name}: carries the logstream.dev/stream label")
        if not ready(p):
            fail(f"{name}: not Ready")
    for p in live:
        print(p["metadata"]["name"])


def read_records(path):
    recs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                # A follower killed mid-line leaves a torn last line.
                continue
            if isinstance(r, dict) and "sid" in r and "seq" in r:
                recs.append(r)
    return recs


def records_from_pods(path, pairs):
    recs = read_records(path)
    by_line = defaultdict(list)
    for r in recs:
        by_line[r.get("line")].append(r)
    for pair in pairs:
        pod, marker = pair.split("=", 1)
        got = by_line.get(marker)
        if not got:
            fail(f"{marker} not received")
        if len(got) != 1:
            fail(f"{marker} received {len(got)} times")
        if got[0].get("pod") != pod:
            fail(f"{marker} came from pod {got[0].get('pod')!r}, written in {pod!r}")
    pods = sorted({r.get("pod") for r in recs})
    print(f"{len(recs)} records from pods {pods}")


def rollout(path, prefix, expected_files):
    recs = read_records(path)
    expected = {}
    for ef in expected_files:
        with open(ef, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    pod, marker = line.split()
                    expected[marker] = pod
    if not expected:
        fail("no marker was written: nothing to check")
    problems = []
    counts = Counter(r.get("line") for r in recs if str(r.get("line", "")).startswith(prefix))
    missing = sorted(m for m in expected if counts[m] == 0)
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} markers missing, e.g. {missing[:5]}")
    dups = sorted(m for m, c in counts.items() if c > 1)
    if dups:
        problems.append(f"{len(dups)} marker lines received more than once, e.g. {dups[:5]}")
    wrong_pod = sorted(
        r["line"] for r in recs if r.get("line") in expected and r.get("pod") != expected[r["line"]]
    )
    if wrong_pod:
        problems.append(f"markers attributed to the wrong pod: {wrong_pod[:5]}")
    seqs = defaultdict(list)
    pod_of = {}
    for r in recs:
        seqs[r["sid"]].append(int(r["seq"]))
        pod_of[r["sid"]] = r.get("pod")
    for sid, s in seqs.items():
        if len(set(s)) != len(s):
            d = sorted(x for x, c in Counter(s).items() if c > 1)
            problems.append(f"source {sid} ({pod_of[sid]}): duplicate seq {d[:5]}")
        if s != sorted(s):
            problems.append(f"source {sid} ({pod_of[sid]}): out of order")
        holes = sorted(set(range(min(s), max(s) + 1)) - set(s))
        if holes:
            problems.append(f"source {sid} ({pod_of[sid]}): {len(holes)} missing seq, e.g. {holes[:5]}")
    pods = sorted({r.get("pod") for r in recs})
    print(
        f"{len(recs)} records, {len(seqs)} sources, pods {pods}; "
        f"{len(expected)} markers written before their pods ended, "
        f"{sum(1 for m in expected if counts[m] == 1)} received exactly once"
    )
    if problems:
        fail("; ".join(problems))


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "pods-converged" and len(args) in (1, 2) and args[1:] in ([], ["native"]):
        pods_converged(int(args[0]), args[1:] == ["native"])
    elif cmd == "pods-without-sidecar" and len(args) == 1:
        pods_without_sidecar(int(args[0]))
    elif cmd == "records-from-pods" and len(args) >= 2:
        records_from_pods(args[0], args[1:])
    elif cmd == "rollout" and len(args) >= 3:
        rollout(args[0], args[1], args[2:])
    else:
        fail(f"usage: {__doc__}")


if __name__ == "__main__":
    main(sys.argv)
