"""`twin-bayes export-dr`: a domain-randomisation function from a saved posterior."""
from __future__ import annotations

import json
from pathlib import Path


def cmd_export_dr(args) -> int:
    from twin_bayes.inference import Twin
    from twin_bayes.inference.store import SUMMARY, load_posterior
    from twin_bayes.policy.export import write_domain_randomization
    posterior = Path(args.posterior)
    if not posterior.is_dir():
        raise ValueError(f"--posterior {posterior}: not a directory (expected the output of `twin-bayes fit`)")
    config = args.config
    if config is None:
        try:
            config = json.loads((posterior / SUMMARY).read_text())["config"]
        except (OSError, ValueError, KeyError):
            raise ValueError(f"--posterior {posterior}: its {SUMMARY} names no config; pass --config") from None
    twin = load_posterior(Twin.from_config(config), posterior)
    out = write_domain_randomization(twin, args.out)
    print(f"wrote {out}: domain_randomize(sys, rng) over {len(twin.posterior)} posterior particles of {twin.cfg.name}")
    return 0


def register(sub) -> dict:
    p = sub.add_parser("export-dr", help="domain-randomisation function (Brax / MuJoCo Playground) from a posterior")
    p.add_argument("--posterior", required=True, help="directory written by `twin-bayes fit`")
    p.add_argument("--config", help="twin config (default: the one named in the posterior's summary.json)")
    p.add_argument("--out", required=True, help="Python file to write")
    return {"export-dr": cmd_export_dr}
