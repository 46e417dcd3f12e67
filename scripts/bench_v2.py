#!/usr/bin/env python3
"""Protocol version 2 on the datagram path, measured against fresh server processes.

    scripts/bench_v2.py run [--duration 10s] [--rounds 3] [--only GROUP ...] > runs.jsonl
    scripts/bench_v2.py summary runs.jsonl

`run` builds the release binaries, then for each round runs every measurement of the
chosen groups against a fresh `mboard-server` process on loopback, the measurements of a
group in an order that turns from round to round. Each run prints one JSON object: the
`mboard-bench --json` report plus `label`, `round`, the 1-minute load average at its start,
`server_cpu_s` and `bench_cpu_s` (CPU time of the server and of the load generator over
the whole run, `wall_s` long) and `foreign`, the share of the machine's CPU time that went to processes other than this
server and this load generator while it ran (the machine is shared; a run with a large
foreign share measured the neighbours as much as mboard).

Groups (a round runs every measurement of a group, back to back):
  once          publish-once (with its echo ceiling), publish-session, publish; in memory
  publish-once  publish-once alone (for an A/B of two builds)
  follow        follow with 0 and with 1000 followers, `1:` publishers, at full rate
  follow-once   the same with `5:` publishers
  paced-200     follow with 1000 followers at 200 publishes a second
  paced-50      the same at 50 a second
  durable       publish-once and publish with `--data-dir` and `--fsync always`
  redis-follow  the peer: `mboard-bench redis-follow` with 0 and with 1000 followers, each
                run against a fresh redis-server (`--save "" --appendonly no`, a free
                loopback port); installed from Debian packages when missing
  follow-vs-redis  follow and redis-follow, 0 and 1000 followers each, in one turning
                order: mboard's and Redis's figures from the same minutes
  paced-vs-redis  follow and redis-follow with 1000 followers at 200 publishes a second

`--server BIN` (repeatable) runs each measurement once per server binary, alternating,
for an A/B of two builds; the label then ends in `@<n>`, n counting from 0.

`--max-foreign F` (say 0.2) keeps a round only if no run in it saw more than that share of
the CPU go to other processes: each attempt first waits for the machine to be quiet (under
F busy for 5 s), and a round that was disturbed anyway is printed with `"rejected": true`
and run again, up to `--attempts` times. The summary leaves rejected runs out.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
PORT = int(os.environ.get("MBOARD_BENCH_PORT", "7798"))
ADDR = f"127.0.0.1:{PORT}"

MEMORY = ["--in-memory"]
DURABLE = ["--fsync", "always"]  # plus --data-dir, fresh for each run
REDIS = ["redis"]  # not mboard: a fresh redis-server for each run

# A follower is a connection, so an open file, in the load generator and in Redis.
NOFILE = 4096

GROUPS = {
    "once": [
        ("publish-once", MEMORY, ["--vs-echo", "publish-once"]),
        ("publish-session", MEMORY, ["publish-session"]),
        ("publish", MEMORY, ["publish"]),
    ],
    "publish-once": [("publish-once", MEMORY, ["publish-once"])],
    "follow": [
        ("follow-0", MEMORY, ["follow", "--followers", "0"]),
        ("follow-1000", MEMORY, ["follow", "--followers", "1000"]),
    ],
    "follow-once": [
        ("follow-once-0", MEMORY, ["follow", "--once", "--followers", "0"]),
        ("follow-once-1000", MEMORY, ["follow", "--once", "--followers", "1000"]),
    ],
    "paced-200": [("follow-1000-rate-200", MEMORY, ["follow", "--followers", "1000", "--rate", "200"])],
    "paced-50": [("follow-1000-rate-50", MEMORY, ["follow", "--followers", "1000", "--rate", "50"])],
    "redis-follow": [
        ("redis-follow-0", REDIS, ["redis-follow", "--followers", "0"]),
        ("redis-follow-1000", REDIS, ["redis-follow", "--followers", "1000"]),
    ],
    "follow-vs-redis": [
        ("follow-0", MEMORY, ["follow", "--followers", "0"]),
        ("redis-follow-0", REDIS, ["redis-follow", "--followers", "0"]),
        ("follow-1000", MEMORY, ["follow", "--followers", "1000"]),
        ("redis-follow-1000", REDIS, ["redis-follow", "--followers", "1000"]),
    ],
    "paced-vs-redis": [
        ("follow-1000-rate-200", MEMORY, ["follow", "--followers", "1000", "--rate", "200"]),
        ("redis-follow-1000-rate-200", REDIS, ["redis-follow", "--followers", "1000", "--rate", "200"]),
    ],
    "durable": [
        ("durable-publish-once", DURABLE, ["publish-once"]),
        ("durable-publish", DURABLE, ["publish"]),
    ],
}


def busy_ticks():
    """CPU ticks spent on anything but idle and iowait, all CPUs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def process_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def children_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ensure_redis():
    """Installs redis-server from Debian packages if it is not on PATH."""
    if shutil.which("redis-server"):
        return
    print("installing redis-server (Debian package)", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL)
    if not shutil.which("redis-server"):
        sys.exit("redis-server is still not on PATH after installing it")


def raise_nofile():
    """Raises the soft limit on open files (inherited by the servers and the load
    generator) to NOFILE, within the hard limit, for 1,000 follower connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 1200:
        sys.exit(f"the hard limit on open files is {hard}: 1,000 followers need about 1,100 (ulimit -Hn)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(data):
    """A fresh redis-server on a free loopback port, persistence off; (process, port)."""
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", data, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if redis_answers(port):
            return server, port
        if server.poll() is not None:
            sys.exit("redis-server exited at start")
        time.sleep(0.1)
    server.kill()
    server.wait()
    sys.exit("redis-server did not start")


def start_server(binary, args, data):
    if args is DURABLE:
        shutil.rmtree(data, ignore_errors=True)
        args = ["--data-dir", data] + args
    server = subprocess.Popen([binary, "--listen", ADDR, "--log-level", "warn"] + args)
    for _ in range(100):
        probe = subprocess.run(
            [os.path.join(BIN, "mboard-client"), "--server", ADDR, "--timeout", "200ms", "ids", "-n", "1"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return server
        time.sleep(0.1)
    server.kill()
    sys.exit("server did not start")


def measure(binary, label, server_args, bench_args, duration, data):
    if server_args is REDIS:
        server, port = start_redis(data)
        bench_args = bench_args[:1] + ["--redis", f"redis://127.0.0.1:{port}"] + bench_args[1:]
    else:
        server = start_server(binary, server_args, data)
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    load = os.getloadavg()[0]
    t0, busy0, srv0, kids0 = time.monotonic(), busy_ticks(), process_ticks(server.pid), children_seconds()
    out = subprocess.run(
        [os.path.join(BIN, "mboard-bench"), "--server", ADDR, "--duration", duration, "--warmup", "1s", "--json"]
        + bench_args,
        capture_output=True,
        text=True,
    )
    t1, busy1, srv1, kids1 = time.monotonic(), busy_ticks(), process_ticks(server.pid), children_seconds()
    server.terminate()
    server.wait()
    if out.returncode != 0:
        sys.exit(f"{label}: {out.stderr.strip()}")
    ours = (srv1 - srv0) / hz + (kids1 - kids0)
    foreign = max(0.0, ((busy1 - busy0) / hz - ours) / ((t1 - t0) * ncpu))
    report = json.loads(out.stdout)
    report.update(label=label, load=round(load, 2), foreign=round(foreign, 3), server_cpu_s=round((srv1 - srv0) / hz, 2),
                  bench_cpu_s=round(kids1 - kids0, 2), wall_s=round(t1 - t0, 2))
    return report


def wait_quiet(share, patience=1800):
    """Waits (up to `patience` seconds) until the CPU has been under `share` busy for 5 s."""
    ncpu = os.cpu_count() or 1
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        b0 = busy_ticks()
        time.sleep(5)
        if (busy_ticks() - b0) / hz / (5 * ncpu) < share:
            return
    sys.exit(f"the machine was not quiet for {patience} s")


def run(opts):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins"], cwd=ROOT, check=True)
    if any(server_args is REDIS for group in opts.only for _, server_args, _ in GROUPS[group]):
        ensure_redis()
    raise_nofile()
    servers = opts.server or [os.path.join(BIN, "mboard-server")]
    data = tempfile.mkdtemp(prefix="mboard-bench-v2.")
    try:
        for rnd in range(1, opts.rounds + 1):
            for group in opts.only:
                runs = GROUPS[group]
                # Turn the order each round, so that no measurement always comes first.
                k = (rnd - 1) % len(runs)
                for attempt in range(opts.attempts):
                    if opts.max_foreign is not None:
                        wait_quiet(opts.max_foreign)
                    results = []
                    for label, server_args, bench_args in runs[k:] + runs[:k]:
                        order = servers if rnd % 2 else list(reversed(servers))
                        # The peer's runs do not depend on the mboard build: once each.
                        for binary in order[:1] if server_args is REDIS else order:
                            tag = label if len(servers) == 1 or server_args is REDIS else f"{label}@{servers.index(binary)}"
                            r = measure(binary, tag, server_args, bench_args, opts.duration, os.path.join(data, "board"))
                            r["round"] = rnd
                            results.append(r)
                    disturbed = opts.max_foreign is not None and max(r["foreign"] for r in results) > opts.max_foreign
                    for r in results:
                        if disturbed:
                            r["rejected"] = True
                        print(json.dumps(r), flush=True)
                    if not disturbed:
                        break
    finally:
        shutil.rmtree(data, ignore_errors=True)


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


def cpu(r):
    """The server's CPU time over the run's wall time, as a share of one core (older
    records have neither)."""
    return f"{r['server_cpu_s'] / r['wall_s']:.0%}" if "server_cpu_s" in r else "?"


def summary(opts):
    every = [json.loads(line) for line in open(opts.file) if line.startswith("{")]
    runs = [r for r in every if not r.get("rejected")]
    if len(runs) < len(every):
        print(f"({len(every) - len(runs)} runs of disturbed rounds left out)\n")

    def by(label):
        return {r["round"]: r for r in runs if r["label"] == label}

    def core(r):
        return r.get("run", r)

    once, session, publish = by("publish-once"), by("publish-session"), by("publish")
    if once:
        print("| round | load | foreign CPU | echo/s | publish-once/s | once / echo | publish-session/s | once / session | publish/s | once p50 / p99 µs | echo p50 / p99 µs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for rnd in sorted(once):
            o, e = core(once[rnd]), once[rnd]["echo"]
            s, p = core(session.get(rnd, {})), core(publish.get(rnd, {}))
            print(f"| {rnd} | {once[rnd]['load']} | {once[rnd]['foreign']:.0%} | {fmt(e['rate'])} | {fmt(o['rate'])} | {o['rate'] / e['rate']:.2f} | "
                  f"{fmt(s.get('rate', 0))} | {o['rate'] / s['rate'] if s else float('nan'):.2f} | {fmt(p.get('rate', 0))} | "
                  f"{fmt(o['p50_us'])} / {fmt(o['p99_us'])} | {fmt(e['p50_us'])} / {fmt(e['p99_us'])} |")
        print()

    def median_of(rows, f):
        return statistics.median(f(x, y) for x, y in rows)

    pairs = {}
    for base, with_ in (("follow-0", "follow-1000"), ("follow-once-0", "follow-once-1000"), ("redis-follow-0", "redis-follow-1000")):
        b, w = by(base), by(with_)
        rows = [(b[rnd], w[rnd]) for rnd in sorted(w) if rnd in b]
        if not rows:
            continue
        pairs[base] = dict(zip(sorted(rnd for rnd in w if rnd in b), rows))
        print(f"| round | load | foreign CPU | {base}/s | {with_}/s | ratio | publish p99 µs, 0 / 1000 | publish resends | follower p50 / p99 µs | unseen | follower reads/s | replies/s | offers | server CPU (of one core), 0 / 1000 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for x, y in rows:
            print(f"| {y['round']} | {x['load']} / {y['load']} | {x['foreign']:.0%} / {y['foreign']:.0%} | {fmt(x['rate'])} | {fmt(y['rate'])} | {y['rate'] / x['rate']:.3f} | {fmt(x['p99_us'])} / {fmt(y['p99_us'])} | {y['timeouts']:,} | "
                  f"{fmt(y['follow_p50_us'])} / {fmt(y['follow_p99_us'])} | {y['follow_unseen']:,} of {y['follow_unseen'] + y['follow_samples']:,} | {fmt(y['follow_messages_per_s'])} | {fmt(y['follow_replies_per_s'])} | {y['follow_offers']:,} | "
                  f"{cpu(x)} / {cpu(y)} |")
        print(f"| median | | | {fmt(median_of(rows, lambda x, y: x['rate']))} | {fmt(median_of(rows, lambda x, y: y['rate']))} | {median_of(rows, lambda x, y: y['rate'] / x['rate']):.3f} | | | "
              f"{fmt(median_of(rows, lambda x, y: y['follow_p50_us']))} / {fmt(median_of(rows, lambda x, y: y['follow_p99_us']))} | "
              f"{median_of(rows, lambda x, y: y['follow_unseen'] / max(1, y['follow_unseen'] + y['follow_samples'])):.0%} | | | | |")
        print()

    ours, peer = pairs.get("follow-0", {}), pairs.get("redis-follow-0", {})
    both = sorted(set(ours) & set(peer))
    if both:
        print("| round | mboard 1000/0 | Redis 1000/0 | mboard / Redis publishes/s, 0 followers | 1000 followers | follower p50 µs, mboard / Redis | follower p99 µs, mboard / Redis |")
        print("|---|---|---|---|---|---|---|")
        for rnd in both:
            (m0, m1), (r0, r1) = ours[rnd], peer[rnd]
            print(f"| {rnd} | {m1['rate'] / m0['rate']:.3f} | {r1['rate'] / r0['rate']:.3f} | {m0['rate'] / r0['rate']:.2f} | {m1['rate'] / r1['rate']:.2f} | "
                  f"{fmt(m1['follow_p50_us'])} / {fmt(r1['follow_p50_us'])} | {fmt(m1['follow_p99_us'])} / {fmt(r1['follow_p99_us'])} |")
        med = lambda f: statistics.median(f(ours[rnd], peer[rnd]) for rnd in both)
        print(f"| median | {med(lambda m, r: m[1]['rate'] / m[0]['rate']):.3f} | {med(lambda m, r: r[1]['rate'] / r[0]['rate']):.3f} | "
              f"{med(lambda m, r: m[0]['rate'] / r[0]['rate']):.2f} | {med(lambda m, r: m[1]['rate'] / r[1]['rate']):.2f} | | |")
        print()

    labels = sorted({r["label"] for r in runs if "rate" in r["label"].split("-")}, key=lambda l: (l.split("@")[-1], l))
    if labels:
        print("| measurement | round | foreign CPU | publishes/s | publish p99 µs | publish resends | follower p50 µs | p99 µs | p99.9 µs | unseen | replies/s | offers |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label in labels:
            for rnd, y in sorted(by(label).items()):
                print(f"| {label} | {rnd} | {y['foreign']:.0%} | {fmt(y['rate'])} | {fmt(y['p99_us'])} | {y['timeouts']:,} | {fmt(y['follow_p50_us'])} | {fmt(y['follow_p99_us'])} | "
                      f"{fmt(y['follow_p999_us'])} | {y['follow_unseen']:,} | {fmt(y['follow_replies_per_s'])} | {y['follow_offers']:,} |")
        print()

    do, dp = by("durable-publish-once"), by("durable-publish")
    if do:
        print("| round | foreign CPU | durable publish-once/s | durable publish/s | ratio | once p50 / p99 µs | publish p50 / p99 µs |")
        print("|---|---|---|---|---|---|---|")
        for rnd in sorted(do):
            o, p = do[rnd], dp[rnd]
            print(f"| {rnd} | {o['foreign']:.0%} / {p['foreign']:.0%} | {fmt(o['rate'])} | {fmt(p['rate'])} | {o['rate'] / p['rate']:.2f} | {fmt(o['p50_us'])} / {fmt(o['p99_us'])} | {fmt(p['p50_us'])} / {fmt(p['p99_us'])} |")
        print()

    ab = sorted({r["label"] for r in runs if "@" in r["label"]})
    if ab:
        print("| measurement | round | publishes/s | publish p99 µs | follower p50 µs | follower p99 µs | foreign CPU |")
        print("|---|---|---|---|---|---|---|")
        for label in ab:
            for rnd, y in sorted(by(label).items()):
                y = core(y)
                print(f"| {label} | {rnd} | {fmt(y['rate'])} | {fmt(y['p99_us'])} | {fmt(y.get('follow_p50_us', 0))} | {fmt(y.get('follow_p99_us', 0))} | {by(label)[rnd]['foreign']:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--duration", default="10s")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    r.add_argument("--server", action="append", help="server binary (repeat for an A/B)")
    r.add_argument("--max-foreign", type=float, help="keep only rounds with less foreign CPU than this share")
    r.add_argument("--attempts", type=int, default=20)
    s = sub.add_parser("summary")
    s.add_argument("file")
    opts = parser.parse_args()
    run(opts) if opts.command == "run" else summary(opts)


if __name__ == "__main__":
    main()
