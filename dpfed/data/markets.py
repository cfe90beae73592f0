"""Daily market series shipped with ``arch``: predict the next day from past log returns.

Series (Sheppard's ``arch`` package, ``arch/data``): the S&P 500 and NASDAQ
composite (adjusted close, 1999-2018), WTI crude oil spot (FRED DCOILWTICO,
1986-2018) and the VIX (2014-2019).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpfed.data.recorded import RecordedDataset, package_file, sliding_windows
from dpfed.errors import check

# instrument -> (folder and file under arch/data, price column)
INSTRUMENTS = {
    "sp500": ("sp500/sp500.csv.gz", "Adj Close"),
    "nasdaq": ("nasdaq/nasdaq.csv.gz", "Adj Close"),
    "wti": ("wti/wti.csv.gz", "DCOILWTICO"),
    "vix": ("vix/vix.csv.gz", "vix"),
}
CLIENT_BY = ("instrument", "window")
TARGETS = ("volatility", "direction", "return")


def load_prices(instrument: str) -> pd.Series:
    """Positive daily prices of one instrument, by date (rows without a price dropped)."""
    file, column = INSTRUMENTS[instrument]
    frame = pd.read_csv(package_file("arch", "data", *file.split("/")))
    frame.columns = [c.lstrip("\ufeff") for c in frame.columns]
    prices = pd.to_numeric(frame[column], errors="coerce")
    prices.index = pd.to_datetime(frame["Date"], format="%m/%d/%Y")
    return prices[prices > 0].dropna().sort_index()


def log_returns(prices: pd.Series) -> np.ndarray:
    """Daily log returns in percent, ``100 * log(p[t] / p[t-1])`` (one fewer than prices)."""
    return 100.0 * np.diff(np.log(prices.to_numpy(dtype=np.float64)))


def day_targets(returns: np.ndarray, target: str, horizon: int) -> np.ndarray:
    """The target of every day ``t`` from the returns after it (NaN where they are missing).

    ``direction``: 1 if ``r[t+1] > 0``; ``return``: ``r[t+1]``; ``volatility``: 1 if the
    mean squared return of the next ``horizon`` days, ``r[t+1..t+horizon]``, exceeds that of
    the last ``horizon`` days, ``r[t-horizon+1..t]`` (realized volatility rises).
    """
    out = np.full(len(returns), np.nan)
    if target == "volatility":
        squared = pd.Series(returns**2).rolling(horizon).mean().to_numpy()  # days t-h+1..t
        past, future = squared[:-horizon], squared[horizon:]
        out[:-horizon] = np.where(np.isnan(past), np.nan, (future > past).astype(np.float64))
    elif target == "direction":
        out[:-1] = (returns[1:] > 0).astype(np.float64)
    else:
        out[:-1] = returns[1:]
    return out


def lagged_features(returns: np.ndarray, lags: int, norm_window: int) -> np.ndarray:
    """Standardized lags ``r[t], r[t-1], ..., r[t-lags+1]`` at every day ``t``.

    Standardized by the mean and std of the ``norm_window`` returns up to and
    including day ``t`` (known at ``t``: no look-ahead). Days without a full
    history are NaN.

    Returns:
        ``[len(returns), lags]`` float64.
    """
    r = pd.Series(returns)
    mean = r.rolling(norm_window).mean()
    std = r.rolling(norm_window).std() + 1e-8
    z = ((r - mean) / std).to_numpy()
    out = np.full((len(returns), lags), np.nan)
    for k in range(lags):
        out[k:, k] = z[: len(z) - k]
    return out


class Markets(RecordedDataset):
    """Next-day prediction from sequences of lagged, standardized daily log returns.

    At day ``t`` the features are the ``lags`` latest log returns, each
    standardized with the trailing ``norm_window``-day mean and std known at
    ``t``; an example is ``seq_len`` consecutive days and its target is read from
    the days after its last day ``t``: ``volatility`` (1 if the realized variance of
    the next ``horizon`` days exceeds that of the last ``horizon``, classification; the
    default), ``direction`` (next day up = 1, classification) or ``return``
    (``100 * log(p[t+1] / p[t])``, regression).
    ``labels: every_step`` gives the target of every day of the window.

    Clients: ``client_by: instrument`` makes each series one client (4);
    ``window`` cuts each series into blocks of ``window_days`` trading days,
    one client per block. Within a client the last ``eval_fraction`` of the
    days evaluate and training windows end before them, ``horizon - 1`` days early
    for ``volatility`` so that no training target spans an evaluation day's return.

    Args:
        instruments: which of sp500, nasdaq, wti, vix.
        client_by: ``instrument`` or ``window``.
        window_days: days per client with ``client_by: window``.
        target: ``volatility``, ``direction`` or ``return``.
        horizon: days of realized variance compared by ``volatility`` (>= 1; ``None``:
            5). The other targets predict the next day (``None`` or 1).
        lags: lagged returns per step (>= 1).
        norm_window: trailing days of the standardization (>= 2).
        stride: days between window starts (>= 1).
        labels: ``last`` or ``every_step``.
        **kwargs: see `RecordedDataset`.
    """

    def __init__(
        self,
        instruments=("sp500", "nasdaq", "wti", "vix"),
        client_by: str = "window",
        window_days: int = 250,
        target: str = "volatility",
        horizon: int | None = None,
        lags: int = 5,
        norm_window: int = 60,
        stride: int = 1,
        labels: str = "last",
        **kwargs,
    ):
        instruments = list(instruments)
        check(
            bool(instruments) and set(instruments) <= set(INSTRUMENTS),
            "instruments",
            instruments,
            f"a non-empty list of {', '.join(INSTRUMENTS)}",
        )
        check(client_by in CLIENT_BY, "client_by", client_by, f"one of {', '.join(CLIENT_BY)}")
        check(target in TARGETS, "target", target, f"one of {', '.join(TARGETS)}")
        if target == "volatility":
            horizon = 5 if horizon is None else horizon
            check(horizon >= 1, "horizon", horizon, ">= 1 (days of realized variance)")
        else:
            check(
                horizon in (None, 1),
                "horizon",
                horizon,
                f"null or 1 with target={target} (the next day)",
            )
            horizon = 1
        check(lags >= 1, "lags", lags, ">= 1")
        check(norm_window >= 2, "norm_window", norm_window, ">= 2")
        check(stride >= 1, "stride", stride, ">= 1")
        super().__init__(**kwargs)
        check(
            window_days >= 2 * self.seq_len + 1,
            "window_days",
            window_days,
            f">= 2 * seq_len + 1 ({2 * self.seq_len + 1}): train and eval windows per client",
        )
        self._check_labels(labels)
        self.instruments, self.client_by, self.window_days = instruments, client_by, window_days
        self.target, self.lags, self.norm_window, self.stride = target, lags, norm_window, stride
        self.horizon = horizon
        self.num_features = lags
        if target == "return":
            self.task, self.num_classes = "regression", 1
        self._finish()

    def coupled_records(self) -> str | None:
        return (
            "each day's returns appear in several records (lags, overlapping windows and a "
            "trailing standardization over past days)"
        )

    def _examples(self, feats: np.ndarray, nxt: np.ndarray, starts: np.ndarray):
        length = self.seq_len
        x = np.stack([feats[s : s + length] for s in starts]).astype(np.float32)
        steps = np.stack([nxt[s : s + length] for s in starts])
        y = steps[:, -1] if self.labels == "last" else steps
        if self.target == "return":
            return x, y.astype(np.float32)
        return x, y.astype(np.int32)

    def _load(self):
        clients = []
        for name in self.instruments:
            returns = log_returns(load_prices(name))
            feats = lagged_features(returns, self.lags, self.norm_window)
            nxt = day_targets(returns, self.target, self.horizon)
            # first day with a full, known history; the last days have no target yet
            first = max(self.norm_window + self.lags, self.horizon) - 1
            last = len(returns) - self.horizon
            feats, nxt = feats[first:last], nxt[first:last]
            if self.client_by == "instrument":
                blocks = [(name, 0, len(nxt))]
            else:
                edges = list(range(0, len(nxt) - self.window_days + 1, self.window_days))
                blocks = [(f"{name}/{k}", e, e + self.window_days) for k, e in enumerate(edges)]
            for block, lo, hi in blocks:
                n = hi - lo
                n_eval = max(self.seq_len, int(round(n * self.eval_fraction)))
                gap = self.horizon - 1  # a training target must not span an eval day
                train = lo + sliding_windows(n - n_eval - gap, self.seq_len, self.stride)
                evals = lo + n - n_eval + sliding_windows(n_eval, self.seq_len, self.stride)
                if len(train) and len(evals):
                    clients.append(
                        (
                            block,
                            self._examples(feats, nxt, train),
                            self._examples(feats, nxt, evals),
                        )
                    )
        return clients
