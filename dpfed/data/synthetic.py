"""Seeded synthetic federated sequence datasets for the users' application areas.

Each generator draws client-specific parameters (how far they stray from the
population's is the ``heterogeneity`` knob) and then independent sequences for
that client. Client ``i`` depends only on ``(seed, i)``, so clients are built
lazily and identically in every process.
"""

from __future__ import annotations

import functools

import numpy as np

from dpfed.data.base import FederatedDataset
from dpfed.data.client_data import ArraySpec, ClientArrays, LazyClientData
from dpfed.errors import check


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class SyntheticDataset(FederatedDataset):
    """Base class: validation, per-client sizes, train/eval split, ClientData.

    Subclasses implement `_client_params` and `_sequences`. Args are documented
    on `dpfed.config.SyntheticDatasetConfig`.

    Attributes:
        train: ClientData of the clients' training splits.
        eval: ClientData of the clients' held-out splits.
        task: ``classification`` or ``regression``.
        num_classes: classes of a classification task (1 for regression).
    """

    task = "classification"
    num_classes = 2
    min_features = 1

    def __init__(
        self,
        num_clients: int,
        examples_mean: float,
        examples_spread: float,
        min_examples: int,
        seq_len: int,
        num_features: int,
        heterogeneity: float,
        eval_fraction: float,
        labels: str,
        seed: int,
    ):
        check(num_clients >= 1, "num_clients", num_clients, ">= 1")
        check(min_examples >= 2, "min_examples", min_examples, ">= 2 (one train, one eval)")
        check(
            examples_mean >= min_examples,
            "examples_mean",
            examples_mean,
            f">= min_examples ({min_examples})",
        )
        check(0 <= examples_spread <= 3, "examples_spread", examples_spread, "in [0, 3]")
        check(seq_len >= 2, "seq_len", seq_len, ">= 2")
        check(
            num_features >= self.min_features,
            "num_features",
            num_features,
            f">= {self.min_features} for this dataset",
        )
        check(0 <= heterogeneity <= 1, "heterogeneity", heterogeneity, "in [0, 1]")
        check(0 < eval_fraction < 1, "eval_fraction", eval_fraction, "in (0, 1)")
        self._check_labels(labels)
        self.num_clients = num_clients
        self.examples_mean = examples_mean
        self.examples_spread = examples_spread
        self.min_examples = min_examples
        self.seq_len = seq_len
        self.num_features = num_features
        self.heterogeneity = heterogeneity
        self.eval_fraction = eval_fraction
        self.seed = seed
        y_shape = [] if labels == "last" else [seq_len]
        y_dtype = "int32" if self.task == "classification" else "float32"
        spec = (ArraySpec((seq_len, num_features), "float32"), ArraySpec(tuple(y_shape), y_dtype))
        self.train = LazyClientData(num_clients, lambda i: self._split(i)[0], spec)
        self.eval = LazyClientData(num_clients, lambda i: self._split(i)[1], spec)

    def num_examples(self, index: int) -> int:
        """Total (train + eval) examples of client ``index``."""
        rng = np.random.default_rng([self.seed, index, 0])
        mu = np.log(self.examples_mean) - self.examples_spread**2 / 2
        return max(self.min_examples, int(round(rng.lognormal(mu, self.examples_spread))))

    @functools.lru_cache(maxsize=512)  # noqa: B019 (per-instance cache of small arrays)
    def _split(self, index: int) -> tuple[ClientArrays, ClientArrays]:
        n = self.num_examples(index)
        rng = np.random.default_rng([self.seed, index, 1])
        params = self._client_params(rng)
        x, y = self._sequences(rng, params, n)
        x = x.astype(np.float32)
        y = y.astype(np.int32 if self.task == "classification" else np.float32)
        if self.labels == "last":
            y = y[:, -1]
        n_eval = self._eval_count(n)
        return (x[:-n_eval], y[:-n_eval]), (x[-n_eval:], y[-n_eval:])

    def _eval_count(self, n: int) -> int:
        return min(n - 1, max(1, int(round(n * self.eval_fraction))))

    def train_records(self, clients) -> int:
        """Training records of ``clients``, from their sizes alone (no data is generated)."""
        return int(
            sum(
                self.num_examples(int(i)) - self._eval_count(self.num_examples(int(i)))
                for i in clients
            )
        )

    def _client_params(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def _sequences(self, rng: np.random.Generator, params: dict, n: int):
        """Returns x ``[n, seq_len, num_features]`` and per-step targets ``[n, seq_len]``."""
        raise NotImplementedError

    def _pad_features(self, rng, channels: list[np.ndarray]) -> np.ndarray:
        """Stacks channels, then adds uninformative sensor channels up to num_features."""
        x = np.stack(channels[: self.num_features], axis=-1)
        extra = self.num_features - x.shape[-1]
        if extra > 0:
            x = np.concatenate([x, rng.normal(size=(*x.shape[:2], extra))], axis=-1)
        return x


class SmartHome(SyntheticDataset):
    """Household sensor and appliance events; predict the light's state ``horizon`` steps ahead.

    Client = household. Steps are 30 minutes. Occupants are home and awake on a
    household-specific schedule; the light tends to be on when someone is home
    after dark and stays in its state. Channels: time of day (sin, cos), motion,
    light level, light state, door contact, then extra noise sensors.
    """

    min_features = 5

    def __init__(self, horizon: int = 4, persistence: float = 2.0, **kwargs):
        check(1 <= horizon <= 48, "horizon", horizon, "in [1, 48] (steps of 30 minutes)")
        check(0 <= persistence <= 5, "persistence", persistence, "in [0, 5]")
        self.horizon = horizon
        self.persistence = persistence
        super().__init__(**kwargs)

    def last_value(self, x):
        """The light's current state (channel 4), ``horizon`` steps before its target."""
        return (self._input_channel(x, 4) > 0.5).astype(np.int32)

    def _client_params(self, rng):
        h = self.heterogeneity
        return {
            "shift": rng.normal(0.0, 3.0 * h),
            "bias": rng.normal(0.0, 1.0 * h),
            "persist": self.persistence + rng.normal(0.0, 0.5 * h),
        }

    def oracle_forecast(self, index, x):
        """The Bayes-optimal forecast of client ``index``'s targets from its inputs ``x``.

        It knows the household's parameters (schedule shift, bias, persistence), which no model
        is told. Given them, the light's state ``horizon`` steps ahead depends on the inputs only
        through its current state and the time of day, so the forecast propagates the light's
        chain from them with the occupancy averaged out. No predictor scores better in
        expectation.
        """
        p = self._client_params(np.random.default_rng([self.seed, index, 1]))
        hour = (np.arctan2(x[..., 0], x[..., 1]).astype(float) * 12 / np.pi) % 24
        on = x[..., 4].astype(float)  # P(light on), now certain
        for step in range(1, self.horizon + 1):
            ahead = (hour + 0.5 * step) % 24
            awake, daylight = _home_awake(ahead, p["shift"]), _daylight(ahead)
            stay, turn = _switch_on(1, awake, daylight, p), _switch_on(0, awake, daylight, p)
            on = on * stay + (1 - on) * turn
        forecast = (on > 0.5).astype(np.int32)
        return forecast[:, -1] if self.labels == "last" else forecast

    def _sequences(self, rng, p, n):
        steps = self.seq_len + self.horizon
        hour = (rng.uniform(0, 24, size=(n, 1)) + 0.5 * np.arange(steps)) % 24
        occupied = rng.random((n, steps)) < _home_awake(hour, p["shift"])
        daylight = _daylight(hour)
        state = np.zeros((n, steps), dtype=np.int64)
        state[:, 0] = rng.random(n) < 0.3
        for t in range(1, steps):
            logit = _light_logit(state[:, t - 1], occupied[:, t], daylight[:, t], p)
            state[:, t] = rng.random(n) < _sigmoid(logit)
        motion = occupied & (rng.random((n, steps)) < 0.8) | (rng.random((n, steps)) < 0.05)
        lux = 0.8 * daylight + 0.5 * state + rng.normal(0, 0.1, size=(n, steps))
        door = occupied & (rng.random((n, steps)) < 0.2)
        rad = 2 * np.pi * hour / 24
        obs = slice(0, self.seq_len)
        channels = [np.sin(rad), np.cos(rad), motion, lux, state, door]
        x = self._pad_features(rng, [c[:, obs].astype(float) for c in channels])
        return x, state[:, self.horizon :]


def _home_awake(hour, shift):
    """P(someone is home and awake) at ``hour`` in a household whose day is shifted by ``shift``."""
    local = (hour - shift) % 24
    return 0.05 + 0.85 * (
        np.exp(-((local - 7.5) ** 2) / 2.0) + ((local > 17) & (local < 23)).astype(float)
    ).clip(0, 1)


def _daylight(hour):
    return np.clip(np.sin(np.pi * (hour - 6.0) / 12.0), 0.0, 1.0)


def _light_logit(previous, occupied, daylight, p):
    """The logit of the light being on, given its previous state and the occupancy."""
    return p["persist"] * (2 * previous - 1) + 3.5 * occupied * (1 - daylight) - 1.5 + p["bias"]


def _switch_on(previous, awake, daylight, p):
    """P(the light is on | its previous state), the occupancy (home and awake w.p. ``awake``)
    averaged out."""
    return sum(
        weight * _sigmoid(_light_logit(previous, occupied, daylight, p))
        for occupied, weight in ((1, awake), (0, 1 - awake))
    )


class Health(SyntheticDataset):
    """Patient vital signs; predict deterioration. Client = hospital ward.

    A deteriorating patient's vitals drift from an onset time on (heart and
    respiratory rate up, SpO2 and blood pressure down, temperature and lactate
    up) on top of noisy, ward-specific baselines. ``labels=last`` asks whether
    the patient is deteriorating; ``every_step`` whether onset has passed.
    Channels (standardised): HR, RR, SpO2, SBP, temperature, lactate, extras.
    """

    min_features = 5

    def __init__(self, prevalence: float = 0.35, **kwargs):
        check(0 < prevalence < 1, "prevalence", prevalence, "in (0, 1)")
        self.prevalence = prevalence
        super().__init__(**kwargs)

    def _client_params(self, rng):
        h = self.heterogeneity
        logit = np.log(self.prevalence / (1 - self.prevalence))
        return {
            "prevalence": _sigmoid(logit + rng.normal(0.0, 1.0 * h)),
            "hr": rng.normal(0.0, 8.0 * h),
            "spo2": rng.normal(0.0, 1.5 * h),
        }

    def _sequences(self, rng, p, n):
        steps = self.seq_len
        t = np.arange(steps)
        sick = rng.random(n) < p["prevalence"]
        onset = rng.uniform(0.3, 0.95, size=n) * (steps - 1)
        severity = rng.uniform(0.6, 1.6, size=n)
        progress = (
            sick[:, None] * np.maximum(0.0, t - onset[:, None]) / steps * 2.5 * severity[:, None]
        )

        def ar_noise(scale):
            e = rng.normal(0, scale, size=(n, steps))
            for k in range(1, steps):
                e[:, k] = 0.7 * e[:, k - 1] + 0.71 * e[:, k]
            return e

        hr = (75 + p["hr"] + 14 * progress + ar_noise(6) - 75) / 12
        rr = (4 * progress + ar_noise(2.5)) / 4
        spo2 = (p["spo2"] - 2.5 * progress + ar_noise(1.2)) / 2
        sbp = (-12 * progress + ar_noise(10)) / 15
        temp = (0.5 * progress + ar_noise(0.35)) / 0.5
        lactate = (0.6 * progress + ar_noise(0.6)) / 0.8
        x = self._pad_features(rng, [hr, rr, spo2, sbp, temp, lactate])
        return x, sick[:, None] & (t[None, :] >= onset[:, None])


class Finance(SyntheticDataset):
    """Per-institution price and indicator series; predict the next step.

    Returns follow a latent AR(1) signal that an order-flow indicator reveals
    noisily; institutions differ in how strongly (and, at high heterogeneity,
    in which direction) the signal moves their prices, and in volatility.
    ``target=direction`` predicts up/down, ``return`` the next return.
    Channels: return, order flow, 5-step momentum, 5-step volatility, volume,
    then extra indicators.
    """

    min_features = 5
    TARGETS = ("direction", "return")

    def __init__(self, target: str = "direction", **kwargs):
        check(target in self.TARGETS, "target", target, f"one of {', '.join(self.TARGETS)}")
        self.target = target
        if target == "return":
            self.task, self.num_classes = "regression", 1
        super().__init__(**kwargs)

    def last_value(self, x):
        """The current return (channel 0): its sign for ``direction``, itself for ``return``."""
        current = self._input_channel(x, 0)
        return (current > 0).astype(np.int32) if self.target == "direction" else current

    def _client_params(self, rng):
        h = self.heterogeneity
        return {"beta": 0.7 * (1.0 + 0.8 * h * rng.normal()), "vol": np.exp(rng.normal(0, 0.3 * h))}

    def _sequences(self, rng, p, n):
        steps = self.seq_len + 1
        signal = np.zeros((n, steps))
        signal[:, 0] = rng.normal(size=n)
        for k in range(1, steps):
            signal[:, k] = 0.85 * signal[:, k - 1] + 0.53 * rng.normal(size=n)
        ret = np.zeros((n, steps))
        ret[:, 1:] = p["vol"] * (p["beta"] * signal[:, :-1] + 0.7 * rng.normal(size=(n, steps - 1)))
        flow = signal + 0.5 * rng.normal(size=(n, steps))
        kernel = np.ones(5) / 5
        momentum = np.apply_along_axis(lambda r: np.convolve(r, kernel)[:steps], 1, ret)
        vol = np.sqrt(np.apply_along_axis(lambda r: np.convolve(r**2, kernel)[:steps], 1, ret))
        volume = np.abs(ret) + 0.3 * rng.random((n, steps))
        obs = slice(0, self.seq_len)
        x = self._pad_features(rng, [c[:, obs] for c in (ret, flow, momentum, vol, volume)])
        nxt = ret[:, 1:]
        return x, (nxt > 0) if self.target == "direction" else nxt
