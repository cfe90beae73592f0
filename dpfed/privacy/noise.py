"""Keys of the DP noise: functions of the run's DP seed and a position, never of the data.

Every noise draw of a run is fixed by ``(dp seed, stream, round, client, step)``:

- a *stream* separates the releases of one run (the central sum, the clipped
  count of adaptive clipping, the tree, DP-SGD steps, local randomizers, ...);
- central noise is drawn from the seed pair ``(stream key, release counter)``
  kept in the aggregator's state (`dpfed.privacy.queries`);
- client-side noise (DP-SGD steps, local randomizers) is drawn from a per-batch
  seed pair that the server derives from ``(stream key, round, client)`` and
  attaches to the client's data, folded with the batch index on the client.

Keys are 64 bits wide, derived with NumPy's ``SeedSequence`` (a hash designed
for seeding), and the noise is drawn with TensorFlow's counter-based Philox
generator, so two releases share noise only if their positions are equal. A run
with ``dp.seed`` set is reproducible and resumes bit-identically; anyone who
knows that seed can recompute every noise draw, so a run meant to protect
anything must draw its seed from OS entropy (``dp.seed=null``) and keep it
secret.
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np

# the batch index a client's local randomizer folds its first batch seed with
LOCAL_FOLD = 2**31 - 1


def draw_secret_seed() -> int:
    """A 128-bit DP seed from the operating system's entropy (``dp.seed=null``)."""
    return secrets.randbits(128)


def stream_id(stream: str) -> int:
    """A stable 64-bit number naming a noise stream (from the stream's name)."""
    return int.from_bytes(hashlib.sha256(stream.encode()).digest()[:8], "little")


def stream_key(dp_seed: int, stream: str) -> int:
    """The 64-bit key (as a signed int64 value) of noise stream ``stream`` of a run.

    Args:
        dp_seed: the run's DP seed, a non-negative integer of any size.
        stream: the stream's name, e.g. ``"sum"``.
    """
    state = np.random.SeedSequence([dp_seed, stream_id(stream)]).generate_state(1, np.uint64)
    return int(state.view(np.int64)[0])


def sampling_seed(run_seed: int, dp_seed: int, secret: bool) -> int:
    """The seed of who takes part (cohorts, pooled record batches): public or secret with the noise.

    Amplification by sampling assumes the adversary does not know who was
    sampled, so with a secret DP seed (``dp.seed=null``) the samplers draw from
    a non-negative 63-bit key of it; otherwise from the run seed, so that runs
    with a public DP seed keep their cohorts across DP seeds.
    """
    if not secret:
        return run_seed
    return int(np.int64(stream_key(dp_seed, "sampling")).view(np.uint64)) >> 1


def position_seed(key: int, *position: int) -> np.ndarray:
    """A TensorFlow stateless seed pair (two int64) for ``position`` of stream ``key``.

    Args:
        key: a stream key (`stream_key`).
        *position: non-negative integers, e.g. ``(round, client)``.

    Returns:
        ``int64[2]``, a 128-bit seed.
    """
    entropy = [int(np.int64(key).view(np.uint64)), *(int(p) for p in position)]
    return np.random.SeedSequence(entropy).generate_state(2, np.uint64).view(np.int64)
