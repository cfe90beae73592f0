r"""Privacy calculator: ``python -m dpfed.privacy epsilon|noise [flags]``, printing one JSON object.

It composes the run config its flags describe and builds the privacy plan with
`dpfed.build.build_privacy`, the function every run uses, so an epsilon printed
here is the epsilon ``run.py`` reports for the same settings (and the noise
multiplier is the one ``dp.target_epsilon`` would calibrate, printed under the
key of the setting it is: for ``dpsgd`` with user-level noise, ``user_noise_multiplier``).
The top-level relation fields are the headline ``epsilon``'s; ``accounts`` gives every
account's own unit, relation and epsilon.
Every mechanism,
sampling and neighbouring relation a run accepts is available; settings a run
refuses are refused here with the flag named.

Examples:
    python -m dpfed.privacy epsilon --population 1000 --sample-size 50 --steps 20
    python -m dpfed.privacy noise --epsilon 2 --sampling fixed --population 1000 \
        --sample-size 50 --steps 20 --neighboring zero_out
    python -m dpfed.privacy epsilon --dataset-size 60000 --batch-size 256 --epochs 60 \
        --noise-multiplier 1.1 --conversion classic --orders 1.1:10.9:0.1,12:63
    python -m dpfed.privacy epsilon --mechanism bandmf --bands 1000 --steps 2000 \
        --participations 2 --noise-multiplier 8.35 --neighboring zero_out --accountant pld \
        --delta 1e-10
    python -m dpfed.privacy epsilon --mechanism bandmf --sampling min_sep_poisson \
        --sampling-groups 10 --population 1000 --sample-size 20 --steps 100 --noise-multiplier 1
    python -m dpfed.privacy noise --epsilon 1 --mechanism dpsgd --record-sampling poisson \
        --client-records 760.6 --client-batch-size 64 --population 10 --sample-size 10 \
        --steps 20 --local-epochs 2 --neighboring zero_out
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from dpfed.errors import ConfigError

SAMPLINGS = ("poisson", "fixed", "shuffle", "cyclic", "min_sep_poisson")
# The mechanism settings (`dp.<key>`) the calculator takes, by the flag that sets each: its
# overrides are built from this table, and a run's errors name these flags. The dp schema fields
# left out (clips, adaptive clipping's quantile and rate, per_layer's split, input_noise's
# bound, dpsgd's user_clip, max_epsilon, seed) change no epsilon: tests/privacy/test_cli.py
# perturbs every field of every mechanism to check that.
DP_FLAGS = {
    "noise_multiplier": "--noise-multiplier",
    "target_epsilon": "--epsilon",
    "delta": "--delta",
    "accountant": "--accountant",
    "conversion": "--conversion",
    "orders": "--orders",
    "neighboring": "--neighboring",
    "pld_discretization": "--pld-discretization",
    "user_noise_multiplier": "--user-noise-multiplier",
    "clipped_count_stddev": "--clipped-count-stddev",
    "noise": "--noise",
    "factorization": "--factorization",
    "bands": "--bands",
    "buffers": "--buffers",
    "record_sampling": "--record-sampling",
}
# the other run config keys the flags set (strategy fields left out change no epsilon either)
RUN_FLAGS = {
    "dp": "--mechanism",
    "strategy.clients_per_round": "--sample-size",
    "strategy.sampling": "--sampling",
    "strategy.sampling_groups": "--sampling-groups",
    "strategy.batch_size": "--batch-size",
    "strategy.local_epochs": "--local-epochs",
    "rounds": "--steps",
}
# run config keys -> the flag that sets them (for error messages)
FLAGS = {**{f"dp.{key}": flag for key, flag in DP_FLAGS.items()}, **RUN_FLAGS}


def flag_value(args: argparse.Namespace, flag: str):
    """The parsed value of ``--some-flag``."""
    return getattr(args, flag[2:].replace("-", "_"))


def parse_orders(text: str) -> list[float]:
    """RDP orders from ``1.5,2,3`` or ranges ``start:stop[:step]`` (inclusive).

    Both can mix: ``1.1:10.9:0.1,12:63``.
    """
    orders = []
    for part in (p for p in text.split(",") if p):
        if ":" in part:
            fields = [float(v) for v in part.split(":")]
            if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] <= 0):
                raise argparse.ArgumentTypeError(f"bad range {part!r}: start:stop[:step], step > 0")
            start, stop, step = fields if len(fields) == 3 else (*fields, 1.0)
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            orders += [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            orders.append(float(part))
    return orders


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, once: a help text that names its own default is left as it is."""

    def _get_help_string(self, action):
        text = action.help or ""
        return (
            text
            if "default" in text or action.default is None
            else super()._get_help_string(action)
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The calculator's flags (``epsilon`` or ``noise`` and the settings)."""
    parser = argparse.ArgumentParser(
        prog="python -m dpfed.privacy",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsShown,
    )
    parser.add_argument(
        "command",
        choices=("epsilon", "noise"),
        help="epsilon: privacy loss of a run; noise: noise multiplier for a target",
    )
    from dpfed.privacy.accounting import DEFAULT_DELTA
    from dpfed.privacy.mechanisms import SCHEMAS

    parser.add_argument(
        "--mechanism", choices=sorted(SCHEMAS), default="gaussian", help="the dp= option"
    )
    parser.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=None,
        help="strategy.sampling (default: the mechanism's: shuffle for tree, "
        "cyclic for bandmf, else poisson)",
    )
    parser.add_argument(
        "--sampling-groups",
        type=int,
        default=None,
        help="min_sep_poisson: groups of clients taking turns (a client's "
        "rounds are at least this far apart)",
    )
    parser.add_argument("--population", type=int, default=None, help="clients in the population")
    parser.add_argument(
        "--sample-size", type=int, default=None, help="clients per round (poisson: expected)"
    )
    parser.add_argument("--steps", type=int, default=None, help="rounds")
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        default=None,
        help="noise std / clip (the run's dp.noise_multiplier; for dpsgd the "
        "example-level one, and noise calibrates the user-level one when "
        "--user-noise-multiplier > 0)",
    )
    parser.add_argument("--epsilon", type=float, default=None, help="target epsilon (noise)")
    parser.add_argument("--delta", type=float, default=DEFAULT_DELTA, help="target delta")
    parser.add_argument(
        "--neighboring",
        choices=("replace_one", "zero_out", "add_remove"),
        default=None,
        help="neighbouring relation (default: the strict one of the sampling)",
    )
    parser.add_argument(
        "--accountant",
        choices=("rdp", "pld", "pure"),
        default=None,
        help="default: the mechanism's (pure for laplace_local and input_noise, else rdp)",
    )
    parser.add_argument(
        "--conversion",
        choices=("improved", "classic"),
        default=None,
        help="RDP to (epsilon, delta) conversion (rdp only; default improved)",
    )
    parser.add_argument(
        "--orders",
        type=parse_orders,
        default=None,
        help="RDP orders, e.g. 1.1:10.9:0.1,12:63 (default: dp-accounting's)",
    )
    parser.add_argument(
        "--pld-discretization",
        type=float,
        default=None,
        help="PLD value discretization (pld only; default 1e-4)",
    )
    parser.add_argument(
        "--participations",
        type=int,
        default=None,
        help="rounds one client took part in, for per-client accounts (local "
        "DP, record-level DP-SGD in clients); default: the most the "
        "sampling allows. With --mechanism bandmf and no --population or "
        "--sample-size: K cyclic participations evenly spaced over "
        "--steps. Refused where no account takes it",
    )
    parser.add_argument("--local-epochs", type=int, default=1, help="dpsgd: local epochs")
    parser.add_argument(
        "--record-sampling",
        choices=("shuffle", "poisson"),
        default=None,
        help="dpsgd: how clients draw batches (default: shuffle)",
    )
    parser.add_argument(
        "--client-batch-size",
        type=int,
        default=None,
        help="dpsgd with --record-sampling poisson: a client's expected batch "
        "size (strategy.batch_size)",
    )
    parser.add_argument(
        "--client-records",
        type=float,
        default=None,
        help="dpsgd with --record-sampling poisson: the mean training records "
        "of a client (summary.json client_records_mean)",
    )
    parser.add_argument(
        "--user-noise-multiplier",
        type=float,
        default=None,
        help="dpsgd: user-level noise multiplier on top (0: none)",
    )
    parser.add_argument(
        "--clipped-count-stddev",
        type=float,
        default=None,
        help="adaptive: clipped-count noise (default 0.05 x sample size)",
    )
    parser.add_argument(
        "--noise", choices=("laplace", "gaussian"), default=None, help="input_noise: its noise"
    )
    parser.add_argument(
        "--factorization",
        choices=("banded", "blt", "sqrt_toeplitz"),
        default=None,
        help="bandmf: the strategy matrix (default: banded)",
    )
    parser.add_argument(
        "--bands",
        type=int,
        default=None,
        help="bandmf: bands of a banded factorization (default: the rounds of an epoch)",
    )
    parser.add_argument(
        "--buffers",
        type=int,
        default=None,
        help="bandmf: buffers of a blt factorization (default: 4)",
    )
    group = parser.add_argument_group("DP-SGD on pooled records (strategy=centralized)")
    group.add_argument("--dataset-size", type=int, default=None, help="training records n")
    group.add_argument("--batch-size", type=int, default=None, help="expected Poisson batch size")
    group.add_argument("--epochs", type=int, default=None, help="passes over the data")
    return parser.parse_args(argv)


def overrides(args) -> tuple[list[str], object]:
    """The run config overrides and the population the flags describe."""
    from dpfed.data.base import Population

    out = [f"dp={args.mechanism}"]
    # --epsilon is the target only for noise; --orders is a list
    dp = {
        key: flag_value(args, flag)
        for key, flag in DP_FLAGS.items()
        if key not in ("target_epsilon", "orders")
    }
    dp["seed"] = 0
    if args.orders is not None:
        out.append(f"dp.orders=[{','.join(repr(o) for o in args.orders)}]")
    if args.command == "noise":
        if args.epsilon is None:
            raise ConfigError("--epsilon", None, "given for noise")
        dp["target_epsilon"] = args.epsilon
    from dataclasses import fields

    from dpfed.privacy.mechanisms import SCHEMAS

    keys = {f.name for f in fields(SCHEMAS[args.mechanism])}
    for key, value in dp.items():
        if value is not None and key not in keys:
            flag = DP_FLAGS[key]
            raise ConfigError(
                flag, value, f"left out with --mechanism {args.mechanism} (it has no such setting)"
            )
    out += [f"dp.{k}={v}" for k, v in dp.items() if v is not None]
    pooled = [args.dataset_size, args.batch_size, args.epochs]
    if any(v is not None for v in pooled):
        if any(v is None for v in pooled):
            raise ConfigError(
                "--dataset-size",
                args.dataset_size,
                "given with --batch-size and --epochs (DP-SGD on pooled records)",
            )
        if args.dataset_size < 1:
            raise ConfigError("--dataset-size", args.dataset_size, ">= 1")
        out += [
            "strategy=centralized",
            f"strategy.batch_size={args.batch_size}",
            f"rounds={args.epochs}",
        ]
        n = args.dataset_size
        return out, Population(1, lambda clients: n * len(clients), 1)
    if (
        args.mechanism == "bandmf"
        and args.participations is not None
        and args.population is None
        and args.sample_size is None
    ):
        # K participations evenly spaced over the steps: one client per round, cyclically
        if args.steps is None or args.participations < 1:
            raise ConfigError("--participations", args.participations, ">= 1, with --steps")
        if args.sampling not in (None, "cyclic"):  # the spacing below is cyclic sampling's
            raise ConfigError(
                "--participations",
                args.participations,
                "given with "
                f"--population and --sample-size for --sampling {args.sampling}, "
                "or with cyclic sampling",
            )
        args.population, args.sample_size = math.ceil(args.steps / args.participations), 1
        args.sampling = args.sampling or "cyclic"
        spaced = math.ceil(args.steps / args.population)  # what cyclic sampling gives one client
        if spaced != args.participations:  # e.g. 6 in 10 steps: 1 client gives 10, 2 give 5
            allowed = sorted({math.ceil(args.steps / n) for n in range(1, args.steps + 1)})
            raise ConfigError(
                "--participations",
                args.participations,
                f"a number of evenly spaced participations {args.steps} steps "
                f"allow ({', '.join(map(str, allowed[:12]))}"
                f"{', ...' if len(allowed) > 12 else ''}), or give "
                "--population and --sample-size instead",
            )
        args.evenly_spaced = True
    for flag, value in (
        ("--population", args.population),
        ("--sample-size", args.sample_size),
        ("--steps", args.steps),
    ):
        if value is None:
            raise ConfigError(
                flag,
                None,
                "given (or --dataset-size, --batch-size and --epochs for DP-SGD on pooled records)",
            )
    if args.population < 1:
        raise ConfigError("--population", args.population, ">= 1")
    out += [
        f"strategy.clients_per_round={args.sample_size}",
        f"rounds={args.steps}",
        f"strategy.local_epochs={args.local_epochs}",
    ]
    if args.sampling is not None:
        out.append(f"strategy.sampling={args.sampling}")
    if args.sampling_groups is not None:
        out.append(f"strategy.sampling_groups={args.sampling_groups}")
    if args.record_sampling == "poisson":
        for flag, value in (
            ("--client-batch-size", args.client_batch_size),
            ("--client-records", args.client_records),
        ):
            if value is None:
                raise ConfigError(flag, None, "given with --record-sampling poisson")
        if not args.client_records > 0:
            raise ConfigError("--client-records", args.client_records, "> 0")
        out.append(f"strategy.batch_size={args.client_batch_size}")
        return out, Population.with_mean_records(args.population, args.client_records, 1)
    return out, Population(args.population, None, 1)


def compute(args) -> dict:
    """The JSON object the calculator prints."""
    from dpfed.build import build_privacy
    from dpfed.config import compose
    from dpfed.privacy.accounting import event_to_dict

    args_overrides, population = overrides(args)
    try:
        cfg = compose(*args_overrides)
    except Exception as err:  # Hydra's composition errors: a value of a wrong type
        raise ConfigError(
            "--flags",
            " ".join(args_overrides),
            f"values of the right types ({str(err).splitlines()[0]})",
        ) from None
    plan = build_privacy(cfg, population)
    if args.participations is not None:
        if args.participations < 1:  # a client that never took part: nothing to account
            raise ConfigError("--participations", args.participations, ">= 1")
        per_client = any(a.per_participation for a in plan.accounts)
        if not (per_client or getattr(args, "evenly_spaced", False)):
            raise ConfigError(
                "--participations",
                args.participations,
                "left out with these settings: it sets the participations of "
                "per-client accounts (local DP, DP-SGD's epsilon_record) and, "
                "for bandmf without --population and --sample-size, the "
                "participation pattern; elsewhere the sampling fixes them",
            )
    out = {
        "command": args.command,
        **{k: v for k, v in vars(args).items() if k not in ("command", "epsilon", "evenly_spaced")},
    }
    if args.command == "noise":
        out["target_epsilon"] = args.epsilon
    out["mechanism"] = plan.label
    described = plan.describe()
    out.update(
        {
            k: v
            for k, v in described.items()
            if k
            in (
                "unit",
                "neighboring",
                "accounting_relation",
                "sampling",
                "sampling_probability",
                "accountant",
                "conversion",
                "orders",
                "pld_discretization",
                "sampling_groups",
                "amplified",
                "sensitivity",
                "accounted_noise_multiplier",
                "factorization",
                "bands",
                "buffers",
                "participations",
                "min_separation",
                "rounds_per_epoch",
                "factorization_sensitivity",
                "prefix_sum_rmse",
                "prefix_sum_max_error",
                "record_sampling",
                "record_sampling_probability",
                "record_steps_per_participation",
                "client_records_mean",
                "sum_noise_multiplier",
            )
        }
    )
    if "example_noise_multiplier" in described:  # dpsgd: each multiplier under its own flag
        out["noise_multiplier"] = described["example_noise_multiplier"]
        out["user_noise_multiplier"] = described["user_noise_multiplier"]
    else:
        out["noise_multiplier"] = plan.noise_multiplier
    epsilons = plan.epsilons(participations=args.participations)
    out.update(epsilons)
    # the top-level relation, sensitivity and event are the headline account's (``epsilon``);
    # every account, with its own unit and relation (DP-SGD's record-level one can differ)
    out["accounts"] = [{**a.describe(), "epsilon": epsilons[a.column]} for a in plan.accounts]
    if args.command == "noise":
        out["epsilon_reached"] = plan.epsilon(plan.budget_account)
    out["dp_event_round_1"] = event_to_dict(plan.headline.event(1))
    if plan.warnings():
        out["warnings"] = list(plan.warnings())
    return out


def main(argv: list[str] | None = None) -> int:
    """Prints the JSON object; exit code 2 with one message for a refused setting."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = compute(args)
    except ConfigError as err:
        key = err.key if err.key.startswith("--") else FLAGS.get(err.key, err.key)
        print(
            f"error: {key}={err.value!r} is not allowed: {key} must be {err.allowed}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(out, default=str, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
