"""Paper-ready figures from run folders: one panel per dataset, one style per mechanism.

Every figure uses the same colour, marker and line style for a mechanism
(`STYLES`), shows the mean over seeds with its standard deviation, keeps the
legend outside the data, and is saved as vector PDF and PNG.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator  # noqa: E402

from dpfed.report.collect import adaptive_label, best_of, target_quantiles  # noqa: E402

# one look per mechanism, kept across every figure
STYLES = {
    "none": ("black", "o", "-"),
    "gaussian": ("#1f77b4", "o", "-"),
    "adaptive": ("#ff7f0e", "s", "--"),
    "tree": ("#2ca02c", "^", "-."),
    "per_layer": ("#d62728", "D", ":"),
    "bandmf": ("#9467bd", "v", "-"),
    "blt": ("#8c564b", "P", "--"),
    "dpsgd": ("#e377c2", "X", "-"),
    "laplace_local": ("#7f7f7f", "<", "--"),
    "gaussian_local": ("#bcbd22", ">", "-."),
    "input_noise": ("#17becf", "*", ":"),
    # strategies, for figures whose series are strategies (communication)
    "fedavg": ("#1f77b4", "o", "-"),
    "fedprox": ("#ff7f0e", "s", "--"),
    "fedadam": ("#2ca02c", "^", "-."),
    "fedyogi": ("#d62728", "D", ":"),
    "fedsgd": ("#9467bd", "v", "-"),
    "centralized": ("#8c564b", "P", "--"),
}
_EXTRA = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def style(name: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a series, the same in every figure."""
    if name in STYLES:
        return STYLES[name]
    return _EXTRA[sum(map(ord, name)) % len(_EXTRA)], "o", "-"


def save(fig, out: str | Path) -> list[Path]:
    """Saves ``fig`` as ``out`` (with a suffix) or as ``out.pdf`` and ``out.png``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if out.suffix else [out.with_suffix(".pdf"), out.with_suffix(".png")]
    for path in paths:  # no creation date in a PDF: the same runs give the same bytes
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        fig.savefig(path, dpi=200, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return paths


def _panels(keys: list) -> tuple:
    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 1.6, 3.2), squeeze=False)
    return fig, list(axes[0])


def _grid(count: int, columns: int) -> tuple:
    """``count`` panels in rows of ``columns``; the axes beyond ``count`` are for the caller
    to hide."""
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.3 * columns + 1.6, 2.9 * rows), squeeze=False
    )
    return fig, list(axes.ravel())


def _legend(fig, axes) -> None:
    handles, labels = {}, {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
            labels[label] = label
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize=8,
        )


# a panel's reference lines by label; any other (the trivial predictor) is grey and dotted
# colours no mechanism in `STYLES` uses (tab:brown was blt's and tab:green tree's)
_REFERENCE_LINES = {
    "no DP": ("black", "--"),
    "last value": ("darkslategray", "-."),
    "oracle": ("magenta", (0, (1, 1))),
}
_OTHER_REFERENCE = ("grey", ":")


def utility_figure(
    frame: pd.DataFrame,
    x: str,
    y: str,
    out,
    *,
    panel: str = "dataset",
    series: str = "mechanism",
    xlabel: str,
    ylabel: str,
    baselines: dict | None = None,
) -> list[Path]:
    """``y`` against a swept ``x`` (e.g. the epsilon budget): mean ± std over seeds per series.

    Args:
        frame: one row per run, with ``panel``, ``series``, ``x`` and ``y`` columns.
        x: the swept setting's column.
        y: the metric's column.
        out: the figure's path (no suffix: PDF and PNG).
        panel: one panel per value of this column.
        series: one line per value of this column.
        xlabel: the x axis label (name the delta and the neighbouring relation).
        ylabel: the y axis label.
        baselines: per panel, ``{label: value}`` drawn as labelled horizontal lines
            (e.g. the non-private result and the trivial predictor).
    """
    keys = sorted(frame[panel].unique())
    fig, axes = _panels(keys)
    ticks = sorted({float(v) for v in frame[x] if math.isfinite(float(v))})
    for ax, key in zip(axes, keys, strict=True):
        part = frame[frame[panel] == key]
        for name, runs in sorted(part.groupby(series), key=lambda item: str(item[0])):
            stats = runs.groupby(x)[y].agg(["mean", "std"]).reset_index()
            stats = stats[np.isfinite(stats[x].astype(float))]
            colour, marker, line = style(str(name))
            ax.errorbar(
                stats[x].astype(float),
                stats["mean"],
                yerr=stats["std"].fillna(0),
                color=colour,
                marker=marker,
                linestyle=line,
                capsize=3,
                markersize=5,
                label=str(name),
            )
        for label, value in (baselines or {}).get(key, {}).items():
            colour, line = _REFERENCE_LINES.get(label, _OTHER_REFERENCE)
            ax.axhline(value, color=colour, lw=1, ls=line, label=label)
        if ticks and min(ticks) > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_title(str(key), fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel, fontsize=9)
    _legend(fig, axes)
    fig.tight_layout()
    return save(fig, out)


def _variant_order(variant: str) -> tuple:
    """Sort key of a series' variant (``eps 0.125``): by its number where it has one."""
    number = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", variant)
    return (0, float(number.group()), variant) if number else (1, 0.0, variant)


def curves_figure(
    data: pd.DataFrame,
    x: str,
    y: str,
    out,
    *,
    panel: str = "dataset",
    series: str = "mechanism",
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> list[Path]:
    """Per-round curves, mean ± std over seeds (a band) per series, one panel per ``panel``.

    A series named ``<family>, <variant>`` (``gaussian, eps 2``) takes its family's style, in a
    shade its variant has in every family (light to dark by the variant's number); the legend
    then names each family once and each variant's shade once. Such families get a panel each
    (``health: gaussian``), a row of panels per ``panel`` value, all of a row on one y scale;
    a series without a variant (``none``, the non-private run) is drawn in every panel of its
    ``panel`` value, as the reference the variants approach.

    Args:
        data: stacked metrics.csv rows with ``panel`` and ``series`` columns
            (`dpfed.report.collect.curves` plus the runs' labels).
        x: a column of metrics.csv (``round``, ``epsilon``).
        y: a column of metrics.csv (``eval/accuracy``).
        out: the figure's path.
        panel: the column that groups the panels (above).
        series: the column naming each series (above).
        xlabel: the x axis label (None: ``x``).
        ylabel: the y axis label (None: ``y``).
    """
    data = data[data[series].notna()]  # rows of no series draw nothing
    data = data.assign(_series=data[series].astype(str), _key=data[panel].astype(str))
    names = sorted(data["_series"].unique())
    family = {name: name.split(",")[0] for name in names}
    variant = {name: name.split(",", 1)[1].strip() if "," in name else "" for name in names}
    variants = sorted({v for v in variant.values() if v}, key=_variant_order)
    shade = {v: 0.3 + 0.7 * k / max(1, len(variants) - 1) for k, v in enumerate(variants)}
    split = len(variants) > 1  # a panel per family, or the panel holds dozens of curves
    panels = []  # (title, panel value, the series drawn)
    for key in sorted(data["_key"].unique()):
        present = sorted(data.loc[data["_key"] == key, "_series"].unique())
        varied = sorted({family[n] for n in present if variant[n]})
        if not split or not varied:
            panels.append((key, key, present))
            continue
        reference = [n for n in present if not variant[n]]
        for name in varied:
            drawn = [n for n in present if variant[n] and family[n] == name] + reference
            panels.append((f"{key}: {name}", key, drawn))
    if split:  # as many columns as the widest row has panels, at most 5
        columns = min(max(Counter(key for _, key, _ in panels).values()), 5)
        fig, axes = _grid(len(panels), columns)
    else:
        fig, axes = _panels([title for title, _, _ in panels])
        columns = len(panels)
    for ax, (title, key, drawn) in zip(axes, panels, strict=False):
        part = data[(data["_key"] == key) & data["_series"].isin(drawn)].dropna(subset=[y])
        groups = sorted(part.groupby("_series"), key=lambda item: str(item[0]))
        for index, (name, runs) in enumerate(groups):
            stats = runs.groupby(x)[y].agg(["mean", "std"]).reset_index()
            stats = stats[np.isfinite(stats["mean"].astype(float))]
            if stats.empty:
                continue
            colour, marker, line = style(family[name])
            alpha = shade.get(variant[name], 1.0) if split else 1.0
            every = max(1, len(stats) // 8)
            # staggered markers keep series that coincide distinguishable
            ax.plot(
                stats[x],
                stats["mean"],
                color=colour,
                marker=marker,
                linestyle=line,
                alpha=alpha,
                markersize=4,
                markevery=(index % every, every),
                label=name,
            )
            spread = stats["std"].fillna(0)
            if spread.any():  # a family's many bands stay light where they overlap
                band = 0.06 if split and variant[name] else 0.15
                ax.fill_between(
                    stats[x],
                    stats["mean"] - spread,
                    stats["mean"] + spread,
                    color=colour,
                    alpha=band,
                    linewidth=0,
                )
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel or x, fontsize=9)
        ax.grid(alpha=0.3)
    used = axes[: len(panels)]
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for key in {key for _, key, _ in panels}:  # one y scale per row of a dataset's panels
        row = [ax for ax, (_, k, _) in zip(used, panels, strict=True) if k == key]
        low = min(ax.get_ylim()[0] for ax in row)
        high = max(ax.get_ylim()[1] for ax in row)
        for ax in row:
            ax.set_ylim(low, high)
    for ax in used[::columns]:
        ax.set_ylabel(ylabel or y, fontsize=9)
    if split:  # a family per style, a variant per shade
        looks = {f: style(f) for f in sorted(set(family.values()))}
        handles = [
            Line2D([], [], color=c, marker=m, linestyle=ls, markersize=4, label=f)
            for f, (c, m, ls) in looks.items()
        ]
        handles += [
            Line2D([], [], color="black", alpha=shade[v], linewidth=2, label=v) for v in variants
        ]
        fig.legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8
        )
    else:
        _legend(fig, used)
    fig.tight_layout()
    return save(fig, out)


def audit_figure(frame: pd.DataFrame, out, *, xlabel: str) -> list[Path]:
    """The audit's lower bound (filled) and one-shot estimate (hollow, where there is one)
    against the accountant's epsilon, one style per mechanism; planted-bug runs in red; the
    diagonal y = x.

    ``frame``: one row per run with ``mechanism``, ``epsilon``, ``bound`` (the largest of the
    run's audit lower bounds), ``audit/epsilon_estimate`` (NaN for canary records) and
    ``planted`` (the planted noise factor, 1 = none).
    """
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    data = frame[np.isfinite(frame["epsilon"].astype(float))]
    estimate = data.get("audit/epsilon_estimate", pd.Series(np.nan, index=data.index))
    data = data.assign(estimate=estimate.astype(float))
    floor = 1e-2  # a bound of 0 (nothing proved) drawn at the axis floor
    for mechanism, part in data.groupby("mechanism"):
        colour, marker, _ = style(str(mechanism))
        honest = part[part["planted"] == 1]
        ax.scatter(
            honest["epsilon"],
            honest["bound"].clip(lower=floor),
            color=colour,
            marker=marker,
            label=f"{mechanism}: lower bound",
        )
        honest = honest[honest["estimate"].notna()]
        if not honest.empty:
            ax.scatter(
                honest["epsilon"],
                honest["estimate"].clip(lower=floor),
                facecolors="none",
                edgecolors=colour,
                marker=marker,
                label=f"{mechanism}: one-shot estimate",
            )
    planted = data[data["planted"] < 1]
    if not planted.empty:
        ax.scatter(
            planted["epsilon"],
            planted["bound"].clip(lower=floor),
            color="red",
            marker="X",
            s=60,
            label="planted bug: lower bound",
        )
        # labels fanned out top to bottom in the order of their points, with leader lines
        ordered = planted.sort_values("bound", ascending=False)
        for i, (_, row) in enumerate(ordered.iterrows()):
            ax.annotate(
                f"{row['mechanism']}, noise x{row['planted']:g}",
                (row["epsilon"], row["bound"]),
                textcoords="offset points",
                xytext=(24, 11 * ((len(ordered) - 1) / 2 - i)),
                fontsize=7,
                color="red",
                va="center",
                arrowprops={"arrowstyle": "-", "color": "red", "lw": 0.5},
            )
    values = pd.concat([data["epsilon"], data["bound"], data["estimate"]]).astype(float)
    top = float(values[np.isfinite(values)].max()) * 2
    ax.plot(
        [floor, top],
        [floor, top],
        color="grey",
        linestyle=":",
        linewidth=1,
        label="audit = accountant",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("audited epsilon (canary clients / records)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(fig, [ax])
    return save(fig, out)


def clip_figure(
    fixed: pd.DataFrame,
    adaptive: pd.DataFrame,
    out,
    *,
    y: str,
    ylabel: str,
    note: str,
    trivial: tuple[str, float] | None = None,
) -> list[Path]:
    """``y`` against the fixed clip (mean ± std over seeds, log x), and each adaptive target
    quantile's result as a horizontal band placed at its mean final clip (Andrew et al. 2021's
    claim).

    ``fixed``: one row per run with ``clip`` and ``y``; ``adaptive``: one row per run with
    ``dp/clip`` (the final adaptive clip), ``y`` and optionally ``target_quantile`` (0.5 when
    absent); ``note`` names the privacy of the runs; ``trivial``: (name, value) of the trivial
    predictor, drawn as a grey line. Where the runs hold a ``server lr`` column with several
    rates, each fixed clip and each quantile is drawn at its best rate (by the mean over seeds,
    as the table chooses it), and every rate's fixed-clip curve as a thin line.
    """
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    colour, marker, line = style("gaussian")
    any_rate = pd.concat([fixed, adaptive]).get("server lr", pd.Series(dtype=float))
    rates = sorted(fixed["server lr"].dropna().unique()) if "server lr" in fixed else []
    if len(rates) > 1:
        shades = plt.cm.Blues(np.linspace(0.35, 0.75, len(rates)))
        for rate, shade in zip(rates, shades, strict=True):
            curve = fixed[fixed["server lr"] == rate].groupby("clip")[y].mean().sort_index()
            ax.plot(
                curve.index,
                curve.values,
                color=shade,
                linewidth=0.8,
                marker=".",
                label=f"fixed clip, server lr {rate:.4g}",
            )
        fixed = best_of(fixed, ["clip"], "server lr", y)
    means = fixed.groupby("clip")[y].agg(["mean", "std"]).sort_index()
    tuned = ", best server lr" if len(rates) > 1 else ""
    ax.errorbar(
        means.index,
        means["mean"],
        yerr=means["std"].fillna(0),
        color=colour,
        marker=marker,
        linestyle=line,
        capsize=3,
        label=f"fixed clip{tuned}",
    )
    first_colour, marker, _ = style("adaptive")
    for k, (quantile, runs) in enumerate(adaptive.groupby(target_quantiles(adaptive))):
        colour = first_colour if k == 0 else f"C{k + 2}"
        runs = best_of(runs, [], "server lr", y)  # as it is where no rate is recorded
        mean, std = float(runs[y].mean()), float(runs[y].std(ddof=1) or 0.0)
        if math.isnan(std):
            std = 0.0
        name = adaptive_label(float(quantile))
        if any_rate.nunique() > 1 and runs["server lr"].notna().any():
            name += f", server lr {float(runs['server lr'].iloc[0]):.4g}"
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        ax.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=name)
        final = float(runs["dp/clip"].mean())
        ax.plot(
            [final],
            [mean],
            color=colour,
            marker=marker,
            linestyle="none",
            label=f"{name}: final clip {final:.3g}",
        )
    if trivial is not None:
        ax.axhline(trivial[1], color="grey", linestyle=":", linewidth=1, label=trivial[0])
    ax.set_xscale("log")
    ax.set_xlabel("clip (L2 bound on a client's update)")
    ax.set_ylabel(ylabel)
    ax.set_title(note, fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    _legend(fig, [ax])
    return save(fig, out)
