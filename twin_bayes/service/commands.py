"""CLI commands `twin-bayes serve` and `twin-bayes keys` (registered through cli.COMMAND_MODULES).

serve prints one JSON line once it listens: ready, robots, the bound endpoints (ingest, query, pub and,
with --metrics-port, metrics) and the absolute paths of its store and checkpoints.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

EXIT_BAD_INPUT = 2
STORE = "twin-store.db"
CHECKPOINTS = "checkpoints"


def register(sub) -> dict:
    p = sub.add_parser("serve", help="run the twin service: ingest, inference, PUB stream, queries")
    p.add_argument("--config", action="append", required=True, metavar="[ROBOT_ID=]CONFIG",
                   help="twin config (file or shipped name); robot_id defaults to the config's name; repeat "
                        "for several robots")
    p.add_argument("--posterior", action="append", default=[], metavar="ROBOT_ID=DIR",
                   help="start robot_id from a posterior written by `twin-bayes fit` (model error included); "
                        "repeat for several robots; a checkpoint of this store, if any, is newer and wins")
    p.add_argument("--store", default=STORE, help="SQLite telemetry store (WAL), created with its directory if "
                                                  "missing; relative to the working directory")
    p.add_argument("--ingest", default="tcp://127.0.0.1:5555", help="telemetry ROUTER address (port * picks one)")
    p.add_argument("--pub", default="tcp://127.0.0.1:5556", help="PUB address of posteriors, predictions, alerts")
    p.add_argument("--query", default="tcp://127.0.0.1:5557", help="query ROUTER address")
    p.add_argument("--checkpoints", default=CHECKPOINTS, help="checkpoint directory, relative to the working "
                                                              "directory ('' for none)")
    p.add_argument("--checkpoint-every", type=float, default=10.0, metavar="S",
                   help="checkpoint the twins at most every S seconds and when stopping (0: after every turn); a "
                        "restart re-applies the telemetry stored after the checkpoint, so only its work depends on it")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0: a free one; default: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the /metrics server")
    p.add_argument("--curve-keys", default=None, help="key directory of `twin-bayes keys`: turns CURVE on "
                                                      "(default: off)")
    p.add_argument("--silent-after", type=float, default=10.0, help="s without chunks before a robot is reported")
    p.add_argument("--health-every", type=float, default=1.0, help="s between health messages")
    p.add_argument("--horizon", type=float, default=0.05, help="s predicted after each window")
    p.add_argument("--alert-probability", type=float, default=0.9,
                   help="P(outside the healthy band) that raises a maintenance alert")
    p.add_argument("--retain-chunks", type=int, default=None, help="keep this many newest chunks per robot "
                                                                  "(default: all)")
    p.add_argument("--retain-versions", type=int, default=None, help="keep this many posterior versions "
                                                                    "(default: all)")
    p.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                   help="before the first window, load every executable the stream needs (`twin-bayes warmup`'s "
                        "calls, in the service), so none loads mid-stream and stalls the updates (default: on)")
    p.add_argument("--max-store-bytes", type=int, default=None,
                   help="cap on the store's size: writes past it fail like a full disk (default: none)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: run until "
                                                             "SIGINT/SIGTERM)")
    k = sub.add_parser("keys", help="generate CURVE certificates (0600) and the allow-list")
    k.add_argument("names", nargs="+", help="'server' and/or robot ids / client names")
    k.add_argument("--dir", required=True, help="key directory (created; allowed/ holds the public keys)")
    return {"serve": cmd_serve, "keys": cmd_keys}


def _bad(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _configs(specs: list[str]) -> dict:
    from twin_bayes.config import load_config
    out = {}
    for spec in specs:
        rid, _, path = spec.rpartition("=")
        cfg = load_config(path)
        rid = rid or cfg.name
        if rid in out:
            raise ValueError(f"robot_id {rid!r} given twice")
        out[rid] = cfg
    return out


def cmd_serve(args) -> int:
    from twin_bayes.config import ConfigError
    from twin_bayes.service import protocol
    from twin_bayes.service.auth import KeysError
    from twin_bayes.service.server import ServiceSettings, TwinService
    from twin_bayes.service.store import StoreError
    from twin_bayes.service.worker import WorkerSettings
    try:
        configs = _configs(args.config)
        for rid in configs:
            protocol.encode("ack", rid, 0, status="stored")  # robot_id must be a valid wire id
    except (ConfigError, ValueError) as e:
        return _bad(str(e))
    posteriors = {}
    for spec in args.posterior:
        rid, _, directory = spec.partition("=")
        if rid not in configs or not directory:
            return _bad(f"--posterior {spec}: expected ROBOT_ID=DIR with a robot_id of --config ({sorted(configs)})")
        posteriors[rid] = Path(directory)
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        return _bad(f"--metrics-port {args.metrics_port}: not a port number")
    store = Path(args.store).resolve()
    checkpoints = Path(args.checkpoints).resolve() if args.checkpoints else None
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _bad(f"--store {args.store}: {e}")
    if not args.checkpoint_every >= 0:
        return _bad(f"--checkpoint-every {args.checkpoint_every}: must be 0 or more seconds")
    worker = WorkerSettings(checkpoints=checkpoints, checkpoint_every_s=args.checkpoint_every,
                            horizon_s=args.horizon, alert_probability=args.alert_probability,
                            retain_chunks=args.retain_chunks, retain_versions=args.retain_versions,
                            preload=args.preload)
    settings = ServiceSettings(configs, store, args.ingest, args.pub, args.query,
                               Path(args.curve_keys) if args.curve_keys else None, args.silent_after,
                               args.health_every, max_store_bytes=args.max_store_bytes, worker=worker,
                               metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                               posteriors=posteriors)
    try:
        service = TwinService(settings).start()
    except (KeysError, StoreError, RuntimeError, ValueError) as e:
        return _bad(str(e))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"ready": True, "robots": sorted(configs), **service.endpoints, "store": str(store),
                      "checkpoints": None if checkpoints is None else str(checkpoints)}), flush=True)
    done.wait(args.seconds)
    service.stop()
    return 0


def cmd_keys(args) -> int:
    from twin_bayes.service.auth import KeysError, generate
    try:
        for name in args.names:
            pub, sec = generate(args.dir, name)
            print(f"{name}: {pub} {sec}")
    except (KeysError, OSError) as e:
        return _bad(str(e))
    return 0
