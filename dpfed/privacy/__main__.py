"""Privacy calculator: ``python -m dpfed.privacy epsilon|noise [flags]``, printing one JSON object.

It builds the same mechanism, sampler and ledger objects a training run builds,
so an epsilon printed here is the epsilon ``run.py`` would report for the same
settings (for ``gaussian``, the noise multiplier is std / clip of TFF's
aggregator, and fixed-size sampling is accounted with sensitivity 2 * clip).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import dp_accounting

from dpfed.errors import ConfigError, check
from dpfed.federated.sampling import (
    FixedSizeSampler,
    FullParticipation,
    PoissonSampler,
    ShuffleSampler,
)
from dpfed.privacy.accounting import ACCOUNTANTS, CONVERSIONS, PrivacyLedger, event_to_dict
from dpfed.privacy.calibration import calibrate_noise_multiplier
from dpfed.privacy.mechanisms import GaussianMechanism, TreeMechanism

MECHANISMS = ("gaussian", "tree", "laplace")
SAMPLINGS = ("poisson", "fixed", "none")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dpfed.privacy", description=__doc__)
    parser.add_argument(
        "command",
        choices=("epsilon", "noise"),
        help="epsilon: privacy loss of a run; noise: noise multiplier for a target",
    )
    parser.add_argument("--mechanism", choices=MECHANISMS, default="gaussian")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="poisson")
    parser.add_argument("--q", type=float, help="sampling probability (poisson)")
    parser.add_argument(
        "--population", type=int, help="population size (fixed; or poisson with --sample-size)"
    )
    parser.add_argument(
        "--sample-size", type=int, help="cohort / batch size (fixed; poisson: expected)"
    )
    parser.add_argument("--noise-multiplier", type=float, help="noise std / sensitivity (epsilon)")
    parser.add_argument("--steps", type=int, required=True, help="rounds or steps composed")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilon", type=float, help="target epsilon (noise)")
    parser.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    parser.add_argument("--conversion", choices=CONVERSIONS, default="improved")
    parser.add_argument(
        "--orders",
        type=lambda s: [float(o) for o in s.split(",") if o],
        help="comma-separated RDP orders (default: dp-accounting's)",
    )
    return parser.parse_args(argv)  # fmt: skip


def make_sampler(args):
    if args.mechanism == "tree":  # DP-FTRL: no sampling; a tree per pass over the population
        check(args.sampling == "none", "--sampling", args.sampling,
              "none with --mechanism tree (DP-FTRL credits no sampling amplification)")  # fmt: skip
        check(args.population is not None and args.sample_size is not None, "--population",
              args.population, "given, with --sample-size, for --mechanism tree (the tree "
              "restarts every population // sample-size steps)")  # fmt: skip
        return ShuffleSampler(args.population, args.sample_size, seed=0)
    if args.sampling == "fixed":
        check(args.population is not None and args.sample_size is not None, "--population",
              args.population, "given, with --sample-size, for --sampling fixed")  # fmt: skip
        check(args.population >= 1, "--population", args.population, ">= 1")
        return FixedSizeSampler(args.population, args.sample_size, seed=0)
    if args.sampling == "poisson":
        if args.q is None and args.population and args.sample_size:
            args.q = args.sample_size / args.population
        check(args.q is not None, "--q", args.q, "given (or --population and --sample-size)")
        return PoissonSampler.with_probability(args.q)
    return FullParticipation()


class LaplaceRelease:
    """A Laplace release of scale ``noise_multiplier * sensitivity``: (1/noise_multiplier)-DP."""

    name = "laplace"

    def __init__(self, noise_multiplier: float):
        check(noise_multiplier > 0, "noise_multiplier", noise_multiplier, "> 0")
        self.noise_multiplier = noise_multiplier

    def round_event(self, sampler, round_num: int, noise_multiplier: float | None = None):
        b = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        return sampler.round_event(round_num, dp_accounting.LaplaceDpEvent(b))


def compute(args) -> dict:
    check(args.steps >= 1, "--steps", args.steps, ">= 1")
    check(0 < args.delta < 1, "--delta", args.delta, "in (0, 1)")
    sampler = make_sampler(args)
    if args.mechanism == "laplace":
        mech = LaplaceRelease(args.noise_multiplier or 1.0)
    else:
        cls = TreeMechanism if args.mechanism == "tree" else GaussianMechanism
        settings = dict(accountant=args.accountant, orders=args.orders, conversion=args.conversion)
        mech = cls(args.noise_multiplier or 1.0, clip=1.0, delta=args.delta, **settings)
    if hasattr(mech, "ledger"):
        ledger = mech.ledger(sampler)  # the training code path: checks the pairing too
    else:
        ledger = PrivacyLedger(args.accountant, args.delta, sampler.neighboring_relation,
                               args.orders, args.conversion)  # fmt: skip
    if not ledger.supports(mech.round_event(sampler, 1, noise_multiplier=1.0)):
        allowed = f"one that supports {args.mechanism} with {args.sampling} sampling"
        raise ConfigError("--accountant", args.accountant, allowed)

    def events_for(z):
        return (mech.round_event(sampler, r, noise_multiplier=z) for r in range(1, args.steps + 1))

    out = {"command": args.command, **{k: v for k, v in vars(args).items() if k != "command"}}
    out["neighboring_relation"] = ledger.describe()["neighboring_relation"]
    if args.command == "epsilon":
        check(args.noise_multiplier is not None, "--noise-multiplier", None, "given for epsilon")
        check(args.noise_multiplier > 0, "--noise-multiplier", args.noise_multiplier, "> 0")
        out["epsilon"] = ledger.planned_epsilon(events_for(args.noise_multiplier))
    else:
        check(args.epsilon is not None and args.epsilon > 0, "--epsilon", args.epsilon, "> 0")
        try:
            z, eps = calibrate_noise_multiplier(events_for, ledger, args.epsilon)
        except ConfigError as err:
            raise ConfigError("--epsilon", err.value, err.allowed) from None
        out.update(noise_multiplier=z, epsilon_reached=eps)
    out["dp_event_round_1"] = event_to_dict(events_for(out["noise_multiplier"]).__next__())
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = compute(args)
    except ConfigError as err:
        key = err.key if err.key.startswith("--") else "--" + err.key.replace("_", "-")
        print(f"error: {key}={err.value!r} is not allowed: {key} must be {err.allowed}",
              file=sys.stderr)  # fmt: skip
        return 2
    print(json.dumps(out, default=lambda v: None if v is None else str(v), allow_nan=True))
    return 0 if math.isfinite(out.get("epsilon", 0.0)) or args.command == "epsilon" else 1


if __name__ == "__main__":
    sys.exit(main())
