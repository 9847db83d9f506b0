"""`twin-bayes export-dr`: a domain-randomisation function from a saved posterior; `twin-bayes policy run`
and `policy predict`: a saved walking controller (`policy.walk`) on an emulated real robot, and the twin's
predictive interval of the same figures."""
from __future__ import annotations

import json
from pathlib import Path


def _load_twin(posterior, config):
    """The Twin of a posterior directory, its config `config` or the one its summary names."""
    from twin_bayes.inference import Twin
    from twin_bayes.inference.store import SUMMARY, load_posterior
    posterior = Path(posterior)
    if not posterior.is_dir():
        raise ValueError(f"--posterior {posterior}: not a directory (expected the output of `twin-bayes fit`)")
    if config is None:
        try:
            config = json.loads((posterior / SUMMARY).read_text())["config"]
        except (OSError, ValueError, KeyError):
            raise ValueError(f"--posterior {posterior}: its {SUMMARY} names no config; pass --config") from None
    return load_posterior(Twin.from_config(config), posterior)


def cmd_export_dr(args) -> int:
    from twin_bayes.policy.export import write_domain_randomization
    twin = _load_twin(args.posterior, args.config)
    out = write_domain_randomization(twin, args.out)
    print(f"wrote {out}: domain_randomize(sys, rng) over {len(twin.posterior)} posterior particles of {twin.cfg.name}")
    return 0


def _print_figures(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=1))
    else:
        for k, v in figures.items():
            print(f"{k:>16}: {v}")


def cmd_policy_run(args) -> int:
    from twin_bayes.policy import walk
    from twin_bayes.sim import load_robot
    robot = load_robot(args.robot)
    policy = walk.load(args.policy, robot.name)
    truth, noise = walk.read_truth(args.truth, robot) if args.truth else (robot.nominal(), None)
    run = walk.real_run(robot, truth, policy, args.seconds, args.seed, noise)
    _print_figures({"robot": robot.name, "truth": args.truth, "seed": args.seed, "seconds_run": args.seconds,
                    **run.figures(0)}, args.json)
    return 0


def cmd_policy_predict(args) -> int:
    from twin_bayes.policy import walk
    from twin_bayes.policy.experiment import posterior_draws
    twin = _load_twin(args.posterior, args.config)
    robot = twin.model.robot
    policy = walk.load(args.policy, robot.name)
    thetas, noise_sd = posterior_draws(twin, args.draws, args.seed)
    outcome = walk.predicted(robot, thetas, noise_sd, policy, args.seconds, args.seed)
    _print_figures({"robot": robot.name, "posterior": args.posterior, "draws": args.draws, "seed": args.seed,
                    "seconds_run": args.seconds, "level": 0.9, **walk.interval(outcome, 0.9)}, args.json)
    return 0


def register(sub) -> dict:
    p = sub.add_parser("export-dr", help="domain-randomisation function (Brax / MuJoCo Playground) from a posterior")
    p.add_argument("--posterior", required=True, help="directory written by `twin-bayes fit`")
    p.add_argument("--config", help="twin config (default: the one named in the posterior's summary.json)")
    p.add_argument("--out", required=True, help="Python file to write")
    pol = sub.add_parser("policy", help="walking controllers: run one on an emulated robot, or predict it")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION", help="run or predict")
    run = psub.add_parser("run", help="run a saved controller on an emulated real robot of a given truth")
    run.add_argument("--policy", required=True, help="controller file (JSON, `policy.walk.save`)")
    run.add_argument("--robot", required=True, help="shipped robot name (the controller must be for it)")
    run.add_argument("--truth", help="truth TOML (docs/EMULATOR.md; default: the nominal robot)")
    pred = psub.add_parser("predict", help="the twin's predictive 90%% interval of a controller's figures")
    pred.add_argument("--policy", required=True, help="controller file (JSON, `policy.walk.save`)")
    pred.add_argument("--posterior", required=True, help="directory written by `twin-bayes fit` (or a study)")
    pred.add_argument("--config", help="twin config (default: the one named in the posterior's summary.json)")
    pred.add_argument("--draws", type=int, default=32, help="posterior draws, one run each (default 32)")
    for q in (run, pred):
        q.add_argument("--seconds", type=float, default=10.0, help="run length (s; default 10)")
        q.add_argument("--seed", type=int, default=0, help="sensor-noise seed (predict: also the draws')")
        q.add_argument("--json", action="store_true", help="print the figures as JSON")
    return {"export-dr": cmd_export_dr, "policy": lambda args: {"run": cmd_policy_run, "predict": cmd_policy_predict}[
        args.policy_command](args)}
