"""One command for a calhl7 load test: start everything, run Locust headless, check, report.

    .venv/bin/python load/run.py --scenario clinic-day --users 50 --duration 60s --rate 250

Starts two `calhl7 sim-ehr` (ehr-main, ehr-legacy; JSON-lines logs) and a `calhl7 serve` on a
fresh data dir with a copy of channels/ (slow-ehr: sim-ehr --delay-ms 200 for ehr-main and
`connection.max_connections: 8` in the copy), runs `locust -f load/locustfile.py --headless`,
samples the queue depth and the engine's RSS every second, waits for the queue to drain,
checks exactly-once in-order delivery per (change, destination) from the store and the
simulators' logs (load/correctness.py), and writes load/results/<timestamp>-<scenario>/:
locust_stats.csv and friends, locust.html, samples.csv, queue.png, summary.md.

Exit status: 0 clean; 1 when any correctness count is not zero, the queue did not drain, or
the error rate / p95 passed --max-error-rate / --max-p95-ms; 2 for a set-up failure.

Against an engine you started yourself: --target http://127.0.0.1:8080 (its secret in
CALHL7_WEBHOOK_SECRET), with --data DIR and --sim-log ehr-main=FILE ... for the check.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load import correctness  # noqa: E402
from load.harness import (  # noqa: E402
    Procs,
    engine_command,
    engine_has_mllp_listener,
    free_port,
    serve_args,
    wait_port,
)
from load.shapes import CURVES  # noqa: E402

SECRET = "load-secret-not-for-production"
DESTINATIONS = ("ehr-main", "ehr-legacy")


def seconds(text: str) -> float:
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def start_sim(procs: Procs, name: str, out: Path, delay_ms: int = 0) -> tuple[int, Path]:
    port = free_port()
    log = out / f"{name}.jsonl"
    cmd = engine_command("sim-ehr", "--port", str(port), "--log", str(log), "--uvloop")
    if delay_ms:
        cmd += ["--delay-ms", str(delay_ms)]
    p = procs.start(name, cmd, out / f"{name}.out")
    wait_port(port, p)
    return port, log


def copy_channels(src: Path, dst: Path, max_connections: dict[str, int]) -> None:
    shutil.copytree(src, dst)
    for dest, n in max_connections.items():
        f = dst / "destinations" / f"{dest}.yaml"
        text = f.read_text()
        text, k = re.subn(r"(?m)^(\s*max_connections:\s*)\d+", rf"\g<1>{n}", text)
        if not k:
            text = text.replace("connection:\n", f"connection:\n  max_connections: {n}\n", 1)
        f.write_text(text)


class Sampler(threading.Thread):
    """Every second: queued messages per destination, pending webhooks, engine RSS."""

    def __init__(self, data: Path | None, engine_pid: int | None, path: Path) -> None:
        super().__init__(daemon=True)
        self.data, self.pid, self.path = data, engine_pid, path
        self.stop = threading.Event()
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.time()

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(time.time() - self.t0, 1)}
        if self.data is not None and correctness.db_path(self.data).exists():
            try:
                conn = correctness.connect_ro(self.data)
                try:
                    depth = correctness.queue_depth(conn)
                finally:
                    conn.close()
                for d in DESTINATIONS:
                    row[d] = depth.get(d, 0)
                row["events_pending"] = depth.get("events_pending", 0)
            except Exception:  # noqa: BLE001 - a busy moment: skip this sample
                pass
        if self.pid is not None:
            try:
                import psutil

                row["rss_mb"] = round(psutil.Process(self.pid).memory_info().rss / 2**20, 1)
            except Exception:  # noqa: BLE001
                pass
        return row

    def latest(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    def run(self) -> None:
        while not self.stop.is_set():
            self.rows.append(self.sample())
            self.stop.wait(1.0)

    def write(self) -> None:
        keys = ["t", *DESTINATIONS, "events_pending", "rss_mb"]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)


def locust_totals(prefix: Path) -> dict[str, Any]:
    """The Aggregated row of Locust's stats CSV, plus each request name."""
    out: dict[str, Any] = {"rows": []}
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return out
    with path.open() as f:
        for r in csv.DictReader(f):
            row = {
                "type": r["Type"], "name": r["Name"], "requests": int(r["Request Count"]),
                "failures": int(r["Failure Count"]), "rps": float(r["Requests/s"] or 0),
                "p50": float(r["50%"] or 0), "p95": float(r["95%"] or 0),
                "p99": float(r["99%"] or 0), "max": float(r["Max Response Time"] or 0),
            }
            if r["Name"] == "Aggregated":
                out["total"] = row
            else:
                out["rows"].append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path, marks: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t = [r["t"] for r in rows]
    for key in (*DESTINATIONS, "events_pending"):
        ax.plot(t, [r.get(key, 0) for r in rows], label=key)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("queued")
    for label, x in marks.items():
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=8, color="grey")
    if any("rss_mb" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(t, [r.get("rss_mb", float("nan")) for r in rows], color="black",
                 linewidth=0.8, linestyle="--", label="engine RSS (MB)")
        ax2.set_ylabel("engine RSS (MB)")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("queue depth and engine memory")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--scenario", choices=sorted(CURVES), default="clinic-day")
    ap.add_argument("--users", type=int, default=50, help="webhook users at the peak")
    ap.add_argument("--duration", default="60s", help="e.g. 60s, 10m")
    ap.add_argument("--rate", type=float, default=250.0, help="webhooks/s at the peak")
    ap.add_argument("--target", help="an engine already running (http://HOST:PORT)")
    ap.add_argument("--data", help="its data dir (with --target), or where to keep ours")
    ap.add_argument("--sim-log", action="append", default=[], metavar="DEST=FILE",
                    help="with --target: the simulators' logs for the check")
    ap.add_argument("--channels", default=str(REPO / "channels"))
    ap.add_argument("--results", help="default load/results/<timestamp>-<scenario>")
    ap.add_argument("--delay-ms", type=int, default=None,
                    help="ehr-main simulator delay (slow-ehr default 200, else 0)")
    ap.add_argument("--main-connections", type=int, default=None,
                    help="connection.max_connections for ehr-main (slow-ehr default 8)")
    ap.add_argument("--cancel-count", type=int, default=500)
    ap.add_argument("--cancel-window", default="60s")
    ap.add_argument("--mllp-users", type=int, default=0,
                    help="front-desk MLLP senders (engine --mllp listener, else a sim-ehr)")
    ap.add_argument("--mllp-rate", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-error-rate", type=float, default=0.01, help="fraction, e.g. 0.01")
    ap.add_argument("--max-p95-ms", type=float, default=1000.0)
    ap.add_argument("--drain-timeout", default="300s",
                    help="how long the queue may take to empty after the load")
    ap.add_argument("--quiet", action="store_true", help="less Locust output")
    args = ap.parse_args(argv)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.results) if args.results else REPO / "load" / "results" / f"{stamp}-{args.scenario}"
    out.mkdir(parents=True, exist_ok=True)
    duration = seconds(args.duration)
    slow = args.scenario == "slow-ehr"
    delay = args.delay_ms if args.delay_ms is not None else (200 if slow else 0)
    main_conns = args.main_connections if args.main_connections is not None else (8 if slow else None)
    notes: list[str] = []
    procs = Procs()
    sampler: Sampler | None = None
    try:
        mllp_target = ""
        if args.target:
            url = args.target.rstrip("/")
            data = Path(args.data) if args.data else None
            sims = dict(s.split("=", 1) for s in args.sim_log)
            engine_pid = None
            channels = Path(args.channels)
            secret = os.environ.get("CALHL7_WEBHOOK_SECRET", SECRET)
        else:
            data = Path(args.data) if args.data else out / "data"
            if data.exists() and any(data.iterdir()):
                print(f"run.py: {data} is not empty; use a fresh data dir", file=sys.stderr)
                return 2
            channels = out / "channels"
            copy_channels(Path(args.channels), channels,
                          {"ehr-main": main_conns} if main_conns else {})
            main_port, main_log = start_sim(procs, "ehr-main", out, delay)
            legacy_port, legacy_log = start_sim(procs, "ehr-legacy", out)
            sims = {"ehr-main": main_log, "ehr-legacy": legacy_log}
            secret = SECRET
            http_port = free_port()
            env = {**os.environ, "CALHL7_WEBHOOK_SECRET": secret, "CALHL7_LOG_LEVEL": "warning",
                   # inbound jobs, if any, must never leave this machine
                   "CALHL7_CALCOM_API_URL": "http://127.0.0.1:9",
                   "EHR_MAIN_HOST": "127.0.0.1", "EHR_MAIN_PORT": str(main_port),
                   "EHR_LEGACY_HOST": "127.0.0.1", "EHR_LEGACY_PORT": str(legacy_port)}
            cmd = engine_command(*serve_args(data, http_port, channels))
            if args.mllp_users:
                if engine_has_mllp_listener():
                    mllp_port = free_port()
                    cmd += ["--mllp", f"127.0.0.1:{mllp_port}"]
                    mllp_target = f"127.0.0.1:{mllp_port}"
                    notes.append("MLLP front-desk users sent to the engine's --mllp listener.")
                else:
                    port, _ = start_sim(procs, "mllp-standin", out)
                    mllp_target = f"127.0.0.1:{port}"
                    notes.append("`calhl7 serve` has no --mllp listener yet: the MLLP users "
                                 "were sent to a `calhl7 sim-ehr` stand-in.")
            eng = procs.start("engine", cmd, out / "engine.out", env)
            wait_port(http_port, eng)
            if mllp_target and "--mllp" in cmd:
                wait_port(int(mllp_target.rsplit(":", 1)[1]), eng)
            engine_pid = eng.pid
            url = f"http://127.0.0.1:{http_port}"
        if args.target and args.mllp_users:
            notes.append("--target given: MLLP users not started (pass the listener yourself "
                         "to locust with --mllp-target).")

        sampler = Sampler(data, engine_pid, out / "samples.csv")
        sampler.start()
        ledger = out / "ledger.jsonl"
        prefix = out / "locust"
        lcmd = [sys.executable, "-m", "locust", "-f", str(REPO / "load" / "locustfile.py"),
                "--headless", "--host", url, "--scenario", args.scenario,
                "--peak-users", str(args.users), "--rate", str(args.rate),
                "--duration", f"{duration}s", "--secret", secret, "--ledger", str(ledger),
                "--seed", str(args.seed), "--cancel-count", str(args.cancel_count),
                "--cancel-window", args.cancel_window, "--stop-timeout", "15",
                "--csv", str(prefix), "--csv-full-history", "--html", str(out / "locust.html"),
                "--loglevel", "WARNING"]
        if args.quiet:
            lcmd.append("--only-summary")
        if mllp_target:
            lcmd += ["--mllp-target", mllp_target, "--mllp-users", str(args.mllp_users),
                     "--mllp-rate", str(args.mllp_rate)]
        print(f"results in {out}\nload: {' '.join(lcmd[2:])}", flush=True)
        load_start = time.time() - sampler.t0
        lrc = subprocess.run(lcmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
        load_end = time.time() - sampler.t0

        # the queue must drain
        drained = None
        if data is not None:
            deadline = time.time() + seconds(args.drain_timeout)
            while time.time() < deadline:
                last = sampler.sample()
                if all(last.get(k, 1) == 0 for k in (*DESTINATIONS, "events_pending")):
                    drained = time.time() - sampler.t0
                    break
                time.sleep(0.5)
            time.sleep(1.5)  # a few flat samples after the drain
        sampler.stop.set()
        sampler.join()
        sampler.write()

        totals = locust_totals(prefix)
        total = totals.get("total", {"requests": 0, "failures": 0, "p50": 0, "p95": 0,
                                     "p99": 0, "rps": 0})
        err_rate = total["failures"] / total["requests"] if total["requests"] else 1.0
        res: dict[str, Any] | None = None
        if data is not None and sims:
            res = correctness.check(data, sims, ledger, channels)
        failures = []
        if total["requests"] == 0:
            failures.append("no requests were made")
        if err_rate > args.max_error_rate:
            failures.append(f"error rate {err_rate:.4f} > {args.max_error_rate}")
        if total["p95"] > args.max_p95_ms:
            failures.append(f"p95 {total['p95']:.0f} ms > {args.max_p95_ms:.0f} ms")
        if res is None:
            notes.append("correctness NOT checked (no --data / --sim-log for the target)")
        elif not correctness.ok(res):
            failures.append("correctness counts are not all zero")
        if data is not None and drained is None:
            failures.append(f"the queue did not drain within {args.drain_timeout}")
        if lrc not in (0, 1):
            failures.append(f"locust exited with {lrc}")

        marks = {"load start": load_start, "load end": load_end}
        if args.scenario in ("mass-cancellation", "slow-ehr"):
            from load.shapes import burst_timeline

            tl = burst_timeline(args.scenario, duration, seconds(args.cancel_window))
            marks["burst"] = load_start + tl["burst_start"] - tl["t0"]
            marks["burst end"] = marks["burst"] + tl["burst_window"]
        if drained is not None:
            marks["drained"] = drained
        if sampler.rows:
            plot(sampler.rows, out / "queue.png", marks)
        summary = render_summary(args, out, total, totals, err_rate, res, sampler.rows,
                                 marks, drained, failures, notes, delay, main_conns)
        (out / "summary.md").write_text(summary)
        (out / "result.json").write_text(json.dumps(
            {"total": total, "error_rate": err_rate, "correctness": res, "drained_at": drained,
             "load_end": load_end, "failures": failures, "marks": marks,
             "peak_queue": {k: max((r.get(k, 0) for r in sampler.rows), default=0)
                            for k in (*DESTINATIONS, "events_pending")},
             "rss_mb": [r.get("rss_mb") for r in sampler.rows if "rss_mb" in r]}, indent=1))
        print("\n" + summary)
        return 1 if failures else 0
    finally:
        if sampler is not None:
            sampler.stop.set()
        procs.stop()


def empty_after(rows: list[dict[str, Any]], t: float) -> str:
    """When the queue was first empty after time t, and from when it stayed empty."""
    keys = (*DESTINATIONS, "events_pending")
    later = [r for r in rows if r["t"] >= t]
    empty = [all(r.get(k, 0) == 0 for k in keys) for r in later]
    first = next((r["t"] - t for r, e in zip(later, empty) if e), None)
    stays = next((later[i]["t"] - t for i in range(len(later)) if all(empty[i:])), None)
    if first is None:
        return "queue NOT empty at any sample after the burst"
    return (f"queue first empty {first:.0f} s after the burst window ended"
            + (f", empty for good {stays:.0f} s after it (background load continues until "
               f"the load ends)" if stays is not None else ""))


def render_summary(args: argparse.Namespace, out: Path, total: dict[str, Any],
                   totals: dict[str, Any], err_rate: float, res: dict[str, Any] | None,
                   rows: list[dict[str, Any]], marks: dict[str, float], drained: float | None,
                   failures: list[str], notes: list[str], delay: int,
                   main_conns: int | None) -> str:
    peak = {k: max((r.get(k, 0) for r in rows), default=0) for k in (*DESTINATIONS, "events_pending")}
    rss = [r["rss_mb"] for r in rows if "rss_mb" in r]
    load_s = marks["load end"] - marks["load start"]
    lines = [
        f"# calhl7 load run: {args.scenario}",
        "",
        f"**{'PASS' if not failures else 'FAIL'}**" + (": " + "; ".join(failures) if failures else ""),
        "",
        f"- command: `load/run.py --scenario {args.scenario} --users {args.users} "
        f"--duration {args.duration} --rate {args.rate:g}`"
        + (f" (target {args.target})" if args.target else ""),
        f"- machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"EHR simulator delay ehr-main {delay} ms; ehr-main connections "
        f"{main_conns or 'as configured'}",
        *([f"- cancellation burst: {args.cancel_count} cancellations in {args.cancel_window} "
           f"from t={marks['burst']:.0f} s; " + empty_after(rows, marks["burst end"])]
          if "burst end" in marks else []),
        f"- load phase {load_s:.0f} s; queue drained "
        + (f"{drained - marks['load end']:.1f} s after the load ended" if drained is not None
           else "NOT within the timeout"),
        "",
        "## Throughput and latency (Locust)",
        "",
        f"requests {total['requests']}, failures {total['failures']} (error rate {err_rate:.4%}), "
        f"{total['requests'] / load_s if load_s else 0:.1f} req/s over the load phase; "
        f"p50 {total['p50']:.0f} ms, p95 {total['p95']:.0f} ms, p99 {total['p99']:.0f} ms",
        "",
        "| type | name | requests | failures | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(totals.get("rows", []), key=lambda r: -r["requests"]):
        lines.append(f"| {r['type']} | {r['name']} | {r['requests']} | {r['failures']} | "
                     f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['max']:.0f} |")
    lines += ["", "## Correctness (per appointment change and destination)", ""]
    if res is None:
        lines.append("not checked")
    else:
        lines += [
            "| lost | duplicated | out of order | dead | quarantined | missing vs stories |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {res['lost']} | {res['duplicated']} | {res['out_of_order']} | {res['dead']} | "
            f"{res['quarantined']} | {res.get('model_missing', 0)} |",
            "",
            "```",
            correctness.describe(res),
            "```",
        ]
    lines += [
        "",
        "## Queue depth over time",
        "",
        "peak queued: " + ", ".join(f"{k} {v}" for k, v in peak.items())
        + (f"; engine RSS {min(rss):.0f}-{max(rss):.0f} MB" if rss else ""),
        "",
        "![queue depth](queue.png)",
        "",
        "Files: `locust_stats.csv`, `locust_stats_history.csv`, `locust_failures.csv`, "
        "`locust.html`, `samples.csv` (1 s samples), `ledger.jsonl` (every webhook sent), "
        "`ehr-main.jsonl` / `ehr-legacy.jsonl` (what each simulated EHR received), "
        "`engine.out`, `result.json`.",
    ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
