"""Runs mboard and its peers side by side and prints one table (see compare-peers.sh)."""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BIN = "target/release"
procs = []


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    time.sleep(0.5)
    if p.poll() is not None:
        sys.exit(f"could not start: {' '.join(cmd)}")
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def bench(port, *args, clients=32, duration="10s"):
    out = subprocess.run(
        [f"{BIN}/mboard-bench", "--server", f"127.0.0.1:{port}", "--clients", str(clients),
         "--duration", duration, "--warmup", "1s", "--json", *args],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def redis_bench(port, *command, n=300_000):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "32", "-n", str(n), "-q", *command],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    if not m:
        sys.exit(f"unexpected redis-benchmark output: {out!r}")
    return float(m.group(1))


def timed(cmd, runs=5):
    """Median wall time of `cmd(i)` over `runs` runs (i = 0, 1, ...)."""
    times = []
    for i in range(runs):
        t = time.monotonic()
        subprocess.run(cmd(i), check=True, capture_output=True)
        times.append(time.monotonic() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atftpd", required=True)
    ap.add_argument("--duration", default="10s")
    args = ap.parse_args()
    d = args.duration
    tmp = tempfile.mkdtemp(prefix="mboard-compare.")
    rows = []  # (what, mboard, peer, ratio, goal, met)
    try:
        start([f"{BIN}/mboard-server", "--in-memory", "--listen", "127.0.0.1:7801",
               "--max-request-size", "17000000", "--log-level", "warn"])
        start([f"{BIN}/mboard-server", "--data-dir", f"{tmp}/board", "--fsync", "always",
               "--listen", "127.0.0.1:7802", "--log-level", "warn"])
        # Transfers get servers of their own: an in-memory board that has just absorbed
        # millions of publishes is a gigabyte of heap, where fresh pages cost more to fault.
        start([f"{BIN}/mboard-server", "--in-memory", "--listen", "127.0.0.1:7803",
               "--max-request-size", "17000000", "--log-level", "warn"])
        start([f"{BIN}/mboard-server", "--data-dir", f"{tmp}/board-never", "--fsync", "never",
               "--listen", "127.0.0.1:7804", "--max-request-size", "17000000", "--log-level", "warn"])
        start(["redis-server", "--port", "6391", "--save", "", "--appendonly", "no"])
        start(["redis-server", "--port", "6392", "--save", "", "--appendonly", "yes",
               "--appendfsync", "always", "--dir", tmp])

        echo = bench(7801, "echo", duration=d)
        get = bench(7801, "get", duration=d)
        publish = bench(7801, "publish", "--size", "16", duration=d)
        last = bench(7801, "last", "-n", "10", duration=d)
        session = bench(7801, "publish-session", "--size", "16", duration=d)
        durable = bench(7802, "publish", "--size", "16", duration=d)
        upload = bench(7803, "upload", "--size", "16MiB", clients=1, duration="5s")
        download = bench(7803, "download", "--size", "16MiB", clients=1, duration="5s")
        upload_loaded = bench(7801, "upload", "--size", "16MiB", clients=1, duration="5s")
        upload_journal = bench(7804, "upload", "--size", "16MiB", clients=1, duration="5s")

        xadd = redis_bench(6391, "XADD", "s", "*", "f", "vvvvvvvvvvvvvvvv")
        xrev = redis_bench(6391, "XREVRANGE", "s", "+", "-", "COUNT", "10")
        xadd_always = redis_bench(6392, "XADD", "s", "*", "f", "vvvvvvvvvvvvvvvv", n=100_000)

        root = f"{tmp}/tftp"
        os.makedirs(root)
        with open(f"{root}/big.bin", "wb") as f:
            f.write(os.urandom(16 << 20))
        os.chmod(tmp, 0o755)
        # World-writable so the servers (running as nobody) can create uploaded files.
        os.chmod(root, 0o777)
        os.chmod(f"{root}/big.bin", 0o644)
        start(["in.tftpd", "-L", "-c", "-s", root, "-a", "127.0.0.1:6969", "-u", "nobody"])
        start([args.atftpd, "--daemon", "--no-fork", "--port", "6970", "--bind-address", "127.0.0.1",
               "--user", "nobody.nogroup", root])
        windowed_opts = ["--option", "blksize 1408", "--option", "windowsize 16"]
        lockstep = timed(lambda i: ["tftp", "-m", "binary", "127.0.0.1", "6969", "-c", "get",
                                    "big.bin", f"{tmp}/o1"])
        windowed = timed(lambda i: ["atftp", *windowed_opts, "-g", "-r", "big.bin",
                                    "-l", f"{tmp}/o2", "127.0.0.1", "6970"])
        # Uploads (TFTP write requests) to new files, written by the server to disk.
        lockstep_put = timed(lambda i: ["tftp", "-m", "binary", "127.0.0.1", "6969", "-c", "put",
                                        f"{root}/big.bin", f"put-lockstep-{i}.bin"])
        windowed_put = timed(lambda i: ["atftp", *windowed_opts, "-p", "-l", f"{root}/big.bin",
                                        "-r", f"put-windowed-{i}.bin", "127.0.0.1", "6970"])

        def rate(r):
            return r["rate"]

        rows += [
            ("echo (ceiling), req/s", rate(echo), None, None, "", None),
            ("get, req/s", rate(get), rate(echo), rate(get) / rate(echo), ">= 85% of echo", rate(get) >= 0.85 * rate(echo)),
            ("publish, req/s", rate(publish), rate(echo), rate(publish) / rate(echo), ">= 80% of echo", rate(publish) >= 0.80 * rate(echo)),
            ("publish vs Redis XADD", rate(publish), xadd, rate(publish) / xadd, ">= 2x XADD", rate(publish) >= 2 * xadd),
            ("last -n 10, req/s", rate(last), rate(echo), rate(last) / rate(echo), ">= 70% of echo", rate(last) >= 0.70 * rate(echo)),
            ("last vs XREVRANGE COUNT 10", rate(last), xrev, rate(last) / xrev, ">= 2x XREVRANGE", rate(last) >= 2 * xrev),
            ("publish-session, req/s", rate(session), rate(echo), rate(session) / rate(echo), ">= 25% of echo", rate(session) >= 0.25 * rate(echo)),
            ("publish --fsync always vs XADD appendfsync always", rate(durable), xadd_always, rate(durable) / xadd_always, ">= 2x", rate(durable) >= 2 * xadd_always),
        ]
        up, down = upload["p50_us"] / 1e6, download["p50_us"] / 1e6
        loaded, journal = upload_loaded["p50_us"] / 1e6, upload_journal["p50_us"] / 1e6
        rows += [
            ("upload 16 MiB, s (vs tftp-hpa lock-step put)", up, lockstep_put, lockstep_put / up, ">= 5x faster", lockstep_put >= 5 * up),
            ("download 16 MiB, s (vs tftp-hpa lock-step get)", down, lockstep, lockstep / down, ">= 5x faster", lockstep >= 5 * down),
            ("upload 16 MiB, s (vs atftp windowsize 16 put)", up, windowed_put, windowed_put / up, "faster", windowed_put > up),
            ("download 16 MiB, s (vs atftp windowsize 16 get)", down, windowed, windowed / down, "faster", windowed > down),
            ("  upload, board after the runs above (vs atftp put)", loaded, windowed_put, windowed_put / loaded, "(info)", None),
            ("  upload, journal --fsync never (vs atftp put)", journal, windowed_put, windowed_put / journal, "(info)", None),
        ]
        for name, r in [("get", get), ("publish", publish), ("last -n 10", last)]:
            rows.append((f"{name} p99, us", r["p99_us"], echo["p99_us"], r["p99_us"] / echo["p99_us"], "<= 2x echo p99", r["p99_us"] <= 2 * echo["p99_us"]))
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"| {'measurement':<52} | {'mboard':>12} | {'peer':>12} | {'ratio':>7} | {'goal':<18} | met |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 14}|{'-' * 9}|{'-' * 20}|-----|")
    for name, ours, peer, ratio, goal, met in rows:
        fmt = (lambda v: f"{v:>12.3f}") if ours < 100 else (lambda v: f"{v:>12,.0f}")
        print(f"| {name:<52} | {fmt(ours)} | {fmt(peer) if peer is not None else ' ' * 12} | "
              f"{f'{ratio:.2f}' if ratio is not None else '':>7} | {goal:<18} | {'' if met is None else ('yes' if met else 'NO'):<3} |")


if __name__ == "__main__":
    main()
