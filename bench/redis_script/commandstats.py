#!/usr/bin/env python3
"""Redis's own time for the confirmed-publish script, per message.

Runs the script of src/transport/redis/resume.rs (or of the files given:
`git show REV:src/transport/redis/resume.rs > old.rs` to compare a revision)
1000 times against the Redis at $REDIS_URL (default redis://127.0.0.1:6379),
each call carrying GATEWAYS gateways x MESSAGES messages of 256 B, one
subscriber per channel, and prints `INFO commandstats`: the script's time
per message and the time of the commands it calls. Unlike the bench's
msg/s this does not move with the machine's load, since Redis times each
call itself. Needs `pip install redis`. Keys and channels start with
`sy-script-bench:` and are deleted afterwards.

    python3 bench/redis_script/commandstats.py --gateways 100 --messages 1
"""
import argparse
import os
import re
import threading

import redis

PREFIX = "sy-script-bench:"


def script_of(path):
    source = open(path).read()
    found = re.search(r'PUBLISH_SCRIPT: &str = r"(.*?)";', source, re.S)
    if not found:
        raise SystemExit(f"{path}: no PUBLISH_SCRIPT in it")
    return found.group(1)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "..", "src", "transport", "redis", "resume.rs")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", default=[default])
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    channels = [f"{PREFIX}{g}" for g in range(args.gateways)]
    keys = [f"{PREFIX}{g}:replay" for g in range(args.gateways)]
    listener = r.pubsub()
    listener.subscribe(*channels)
    done = threading.Event()

    def drain():
        while not done.is_set():
            listener.get_message(timeout=0.1)

    threading.Thread(target=drain, daemon=True).start()
    payload = bytes((i % 255) + 1 for i in range(256))
    argv = ["30000", "PUBLISH", "100000"]
    for channel in channels:
        argv += [channel, str(args.messages)] + [payload] * args.messages
    messages = args.gateways * args.messages
    try:
        for path in args.sources:
            sha = r.script_load(script_of(path))
            for _ in range(50):
                r.evalsha(sha, len(keys), *keys, *argv)
            r.config_resetstat()
            for _ in range(args.calls):
                r.evalsha(sha, len(keys), *keys, *argv)
            stats = r.info("commandstats")
            script = stats["cmdstat_evalsha"]["usec"] / args.calls / messages
            inner = ", ".join(
                f"{name} {stats['cmdstat_' + name]['usec'] / args.calls / messages:.2f}"
                for name in ("xadd", "pexpire", "publish")
                if "cmdstat_" + name in stats
            )
            print(
                f"{os.path.basename(path)}: {args.gateways} gateways x {args.messages} messages:"
                f" script {script:.2f} us/message (of which {inner})"
            )
            r.delete(*keys)
    finally:
        done.set()


if __name__ == "__main__":
    main()
