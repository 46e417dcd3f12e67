#!/usr/bin/env python3
"""Tables of scripts/bench-v2.sh runs: `scripts/bench_v2_summary.py runs.jsonl`."""

import json
import statistics
import sys


def main(path):
    runs = [json.loads(line) for line in open(path) if line.startswith("{")]
    rounds = sorted({r["round"] for r in runs})

    def get(rnd, label):
        for r in runs:
            if r["round"] == rnd and r["label"] == label:
                return r.get("run", r)
        return None

    def echo(rnd):
        for r in runs:
            if r["round"] == rnd and r["label"] == "publish-once":
                return r["echo"]
        return None

    def load(rnd, label):
        for r in runs:
            if r["round"] == rnd and r["label"] == label:
                return r["load"]
        return float("nan")

    print("| round | load | echo/s | publish-once/s | publish-session/s | publish/s | once/echo | once/session | once p99 us | echo p99 us |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {"echo": [], "session": []}
    for rnd in rounds:
        e, o, s, p = echo(rnd), get(rnd, "publish-once"), get(rnd, "publish-session"), get(rnd, "publish")
        ratios["echo"].append(o["rate"] / e["rate"])
        ratios["session"].append(o["rate"] / s["rate"])
        print(f"| {rnd} | {load(rnd, 'publish-once'):.2f} | {e['rate']:,.0f} | {o['rate']:,.0f} | {s['rate']:,.0f} | {p['rate']:,.0f} | "
              f"{o['rate'] / e['rate']:.2f} | {o['rate'] / s['rate']:.2f} | {o['p99_us']:,.0f} | {e['p99_us']:,.0f} |")
    print(f"\nmedian once/echo {statistics.median(ratios['echo']):.2f}, once/session {statistics.median(ratios['session']):.2f}\n")

    for base, with_ in (("follow-0", "follow-1000"), ("follow-once-0", "follow-once-1000")):
        print(f"| round | {base}/s | {with_}/s | ratio | publish p99 us (0 / 1000) | publish timeouts (1000) | follower p50 us | follower p99 us | unseen | follower reads msgs/s | replies/s | offers |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rnd in rounds:
            b, w = get(rnd, base), get(rnd, with_)
            if not b or not w:
                continue
            print(f"| {rnd} | {b['rate']:,.0f} | {w['rate']:,.0f} | {w['rate'] / b['rate']:.3f} | {b['p99_us']:,.0f} / {w['p99_us']:,.0f} | {w['timeouts']} | "
                  f"{w['follow_p50_us']:,.0f} | {w['follow_p99_us']:,.0f} | {w['follow_unseen']:,} | {w['follow_messages_per_s']:,.0f} | {w['follow_replies_per_s']:,.0f} | {w['follow_offers']:,} |")
        print()

    for label in sorted({r["label"] for r in runs if r["label"].startswith("follow-1000-rate")}):
        print(f"| round | {label}: publishes/s | follower p50 us | follower p99 us | p99.9 us | unseen | replies/s | publish timeouts |")
        print("|---|---|---|---|---|---|---|---|")
        for rnd in rounds:
            w = get(rnd, label)
            if w:
                print(f"| {rnd} | {w['rate']:,.0f} | {w['follow_p50_us']:,.0f} | {w['follow_p99_us']:,.0f} | {w['follow_p999_us']:,.0f} | {w['follow_unseen']:,} | {w['follow_replies_per_s']:,.0f} | {w['timeouts']} |")
        print()

    print("| round | durable publish-once/s | durable publish/s | ratio | once p50 / p99 us | publish p50 / p99 us |")
    print("|---|---|---|---|---|---|")
    for rnd in rounds:
        o, p = get(rnd, "durable-publish-once"), get(rnd, "durable-publish")
        if o and p:
            print(f"| {rnd} | {o['rate']:,.0f} | {p['rate']:,.0f} | {o['rate'] / p['rate']:.2f} | {o['p50_us']:,.0f} / {o['p99_us']:,.0f} | {p['p50_us']:,.0f} / {p['p99_us']:,.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
