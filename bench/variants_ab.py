"""Alternated A/B of the gateway's CPU per request: code versions and settings side by side.

Each variant is one gateway on the dummy backend (pinned to CPU 0, wrk -c16
on CPU 1, as in auth_bench.py), started from a source tree of its own (a git
worktree, to compare commits) and with settings of its own. In each round
all variants are loaded at the same time, sharing CPU 0 (--apart: one after
the other, the order rotating); the medians of req/s, of the ratio to the
first variant's req/s in the same round, and of the gateway's CPU time per
request (from /proc) are printed. The machine is noisy: differences under
~1.5 us a request need more rounds, or the in-process driver
(bench/inprocess.py).

    git worktree add /tmp/base HEAD~1
    .venv/bin/python bench/variants_ab.py --rounds 8 \\
        old=/tmp/base/src:LIMITS new=:LIMITS off=:GATEWAY_AUTH=false

A variant is NAME=[SRC]:[SETTINGS], SETTINGS a comma-separated list of
VAR=value environment settings; LIMITS stands for the three per-key limits
set far above the load, REDIS for REDIS_URL of a redis-server the script
starts on CPU 1. An empty SRC is this checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import auth_bench as ab

LIMITS = {
    "GATEWAY_REQUESTS_PER_MINUTE": ab.HUGE,
    "GATEWAY_TOKENS_PER_MINUTE": ab.HUGE,
    "GATEWAY_CONCURRENT_REQUESTS": ab.HUGE,
}


def parse(spec: str) -> tuple[str, str, dict[str, str]]:
    name, _, rest = spec.partition("=")
    src, _, settings = rest.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, settings.split(",")):
        if item == "LIMITS":
            env.update(LIMITS)
        elif item == "REDIS":
            env["REDIS_URL"] = "REDIS"  # filled in once the server is up
        else:
            key, _, value = item.partition("=")
            env[key] = value
    return name, src, env


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="NAME=[SRC]:[SETTINGS]")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--apart", action="store_true", help="load the variants one after the other")
    args = p.parse_args(argv)
    specs = [parse(v) for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="variants-") as tmp, ExitStack() as stack:
        script = Path(tmp) / "post.lua"
        script.write_text(ab.WRK_SCRIPT % ("dummy", 16, ab.KEY))
        redis_url = ""
        if any(env.get("REDIS_URL") == "REDIS" for _, _, env in specs):
            redis_url = stack.enter_context(ab.own_redis(Path(tmp)))
        bases: dict[str, str] = {}
        for name, src, env in specs:
            if env.get("REDIS_URL") == "REDIS":
                env["REDIS_URL"] = redis_url
            if src:
                os.environ["PYTHONPATH"] = str(Path(src).resolve())
            try:
                bases[name] = stack.enter_context(ab.gateway(name, env, Path(tmp), False))
            finally:
                os.environ.pop("PYTHONPATH", None)
        for base in bases.values():  # warm up
            ab.wrk(base, script, 16, 1, True)
        rps: dict[str, list[float]] = {n: [] for n in bases}
        cpu: dict[str, list[float]] = {n: [] for n in bases}
        names = list(bases)
        ratio: dict[str, list[float]] = {n: [] for n in bases}
        for r in range(args.rounds):
            if args.apart:
                loads: dict[str, dict[str, float]] = {}
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    loads[name] = ab.wrk(bases[name], script, 16, args.seconds, True)
            else:
                loads, busy = ab.wrk_together(bases, script, 16, args.seconds)
                if busy < 0.9:
                    print(f"  WARNING: CPU 0 only {busy:.0%} busy")
            for name, m in loads.items():
                rps[name].append(m["rps"])
                cpu[name].append(m["cpu_us"])
                ratio[name].append(m["rps"] / loads[names[0]]["rps"])
            print("  " + "  ".join(f"{n} {cpu[n][-1]:.1f} us" for n in names), flush=True)
        for n in names:
            print(
                f"{n:12} {statistics.median(rps[n]):9.0f} req/s   "
                f"{statistics.median(ratio[n]):.3f} of {names[0]}   "
                f"{statistics.median(cpu[n]):6.1f} us CPU/req (min {min(cpu[n]):.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
