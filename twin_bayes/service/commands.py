"""CLI commands `twin-bayes serve` and `twin-bayes keys` (registered through cli.COMMAND_MODULES)."""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

EXIT_BAD_INPUT = 2


def register(sub) -> dict:
    p = sub.add_parser("serve", help="run the twin service: ingest, inference, PUB stream, queries")
    p.add_argument("--config", action="append", required=True, metavar="[ROBOT_ID=]CONFIG",
                   help="twin config (file or shipped name); robot_id defaults to the config's name; repeat "
                        "for several robots")
    p.add_argument("--store", default="twin-store.db", help="SQLite telemetry store (WAL)")
    p.add_argument("--ingest", default="tcp://127.0.0.1:5555")
    p.add_argument("--pub", default="tcp://127.0.0.1:5556")
    p.add_argument("--query", default="tcp://127.0.0.1:5557")
    p.add_argument("--checkpoints", default="checkpoints", help="checkpoint directory ('' for none)")
    p.add_argument("--curve-keys", default=None, help="key directory of `twin-bayes keys`: turns CURVE on")
    p.add_argument("--silent-after", type=float, default=10.0, help="s without chunks before a robot is reported")
    p.add_argument("--health-every", type=float, default=1.0, help="s between health messages")
    p.add_argument("--horizon", type=float, default=0.05, help="s predicted after each window")
    p.add_argument("--alert-probability", type=float, default=0.9)
    p.add_argument("--retain-chunks", type=int, default=None, help="keep this many newest chunks per robot")
    p.add_argument("--retain-versions", type=int, default=None, help="keep this many posterior versions")
    p.add_argument("--max-store-bytes", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    k = sub.add_parser("keys", help="generate CURVE certificates (0600) and the allow-list")
    k.add_argument("names", nargs="+", help="'server' and/or robot ids / client names")
    k.add_argument("--dir", required=True)
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
    worker = WorkerSettings(checkpoints=Path(args.checkpoints) if args.checkpoints else None,
                            horizon_s=args.horizon, alert_probability=args.alert_probability,
                            retain_chunks=args.retain_chunks, retain_versions=args.retain_versions)
    settings = ServiceSettings(configs, Path(args.store), args.ingest, args.pub, args.query,
                               Path(args.curve_keys) if args.curve_keys else None, args.silent_after,
                               args.health_every, max_store_bytes=args.max_store_bytes, worker=worker)
    try:
        service = TwinService(settings).start()
    except (KeysError, StoreError, RuntimeError) as e:
        return _bad(str(e))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"ready": True, "robots": sorted(configs), **service.endpoints}), flush=True)
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
