"""Plots of the `compare` benchmark group (bench/results/compare-*.json):
server memory against idle connections, latency CDFs, fan-out curve.
Usage: plot.py RESULTS_DIR OUT_DIR (run through plot.sh, which installs
matplotlib)."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = ["ours-ws", "ours-sse", "ws", "socketio", "tailf"]
STYLE = {
    "ours-ws": dict(color="tab:blue", marker="o"),
    "ours-sse": dict(color="tab:cyan", marker="s"),
    "ws": dict(color="tab:red", marker="^"),
    "socketio": dict(color="tab:orange", marker="v"),
    "tailf": dict(color="tab:gray", marker="x"),
}


def load(d, name):
    p = d / name
    return json.loads(p.read_text()) if p.exists() else None


def idle(d, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for t in TARGETS:
        v = load(d, f"compare-idle-{t}.json")
        if not v:
            continue
        pts = [(p["conns"], p.get("server_mem_bytes") or p["server_rss_bytes"]) for p in v["points"]]
        fit = (v.get("server_mem_fit_from_first_step") or {}).get("bytes_per_conn")
        label = f"{t} ({fit:,.0f} B/conn)" if fit else t
        ax.plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], label=label, **STYLE[t])
        drawn = True
    if not drawn:
        return
    ax.set_xlabel("idle connections")
    ax.set_ylabel("server memory (MiB; VmRSS + children's Pss)")
    ax.set_title("Server memory against idle connections")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare-idle.png", dpi=110)
    plt.close(fig)


def latency(d, out):
    loads = [(1, "1 line/s, 1 client"), (10000, "10,000 lines/s, 100 clients")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    drawn = False
    for ax, (rate, title) in zip(axes, loads):
        for t in TARGETS:
            v = load(d, f"compare-latency-{rate}-{t}.json")
            if not v or not v.get("cdf"):
                continue
            qs = [q for q, _ in v["cdf"]]
            xs = [max(x, 1) / 1000.0 for _, x in v["cdf"]]
            ax.step(xs, qs, where="post", label=t, color=STYLE[t]["color"])
            drawn = True
        ax.set_xscale("log")
        ax.set_xlabel("write → client latency (ms, log)")
        ax.set_ylabel("share of deliveries")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not drawn:
        plt.close(fig)
        return
    fig.tight_layout()
    fig.savefig(out / "compare-latency.png", dpi=110)
    plt.close(fig)


def fanout(d, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for t in TARGETS:
        pts = []
        for c in [1, 10, 100, 1000, 10000]:
            v = load(d, f"compare-fanout-{c}-{t}.json")
            if v:
                pts.append((c, v["delivered_per_sec"], v.get("all_done", False)))
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=t, **STYLE[t])
        for c, y, done in pts:
            if not done:
                ax.annotate("timeout", (c, y), fontsize=7, color=STYLE[t]["color"])
        drawn = True
    if not drawn:
        return
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients")
    ax.set_ylabel("lines delivered per second (all clients)")
    ax.set_title("Fan-out: one file to N clients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "compare-fanout.png", dpi=110)
    plt.close(fig)


def soak(d, out):
    """RSS, open descriptors, CPU and connected clients of the server over
    the soak run (bench/results/soak.json, written by ls-soak)."""
    v = load(d, "soak.json")
    if not v:
        return
    samples = v["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    series = [
        ("rss_bytes", "RSS (MiB)", 1 / 2**20, "tab:blue"),
        ("fds", "open descriptors", 1, "tab:green"),
        ("cpu_share", "CPU (cores)", 1, "tab:red"),
        ("clients", "connected clients", 1, "tab:purple"),
    ]
    for ax, (key, label, scale, color) in zip(axes, series):
        ax.plot(t, [(s.get(key) or 0) * scale for s in samples], color=color, lw=1)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    load_ = v["load"]
    axes[0].set_title(
        f"Soak: {load_['files']} rotating files, {load_['rate_lines_per_s']} lines/s, "
        f"{load_['clients']} churning + {load_['slow_clients']} slow clients, "
        f"a hostile one every {load_['hostile_every_s']} s"
    )
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)


def main():
    d, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    idle(d, out)
    latency(d, out)
    fanout(d, out)
    soak(d, out)
    print(f"plots written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
