"""TFF execution runtime with process hygiene for TFF's C++ ``worker_binary``.

TFF 0.87 runs computations in a ``worker_binary`` child process that inherits
the parent's stdout/stderr and is only stopped from a ``__del__`` that often
never runs. Left alive, it keeps pipes open (``python run.py | tail`` hangs) and
outlives the run. Here every worker is started with its output detached, with
the kernel told to kill it when its parent dies (even on SIGKILL), and is
reaped explicitly when the runtime context closes and at interpreter exit.

Import TFF through this module (``from dpfed.runtime import tff``)
so that these protections are in place before any worker can start.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import tensorflow_federated as tff

# private APIs of TFF 0.87.0, used only here (tests/test_private_apis.py checks them)
from tensorflow_federated.python.core.impl.context_stack.set_default_context import (
    set_no_default_context,
)
from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

WORKER_NAME = "worker_binary"
_PR_SET_PDEATHSIG = 1
# How long TFF's own shutdown (SIGINT, then an unbounded wait) may take before the worker is
# killed. An idle worker exits at once; on a loaded machine it can ignore SIGINT for as long as
# it is given (10 s cost every module of the test suite 10 s), and it holds nothing dpfed needs.
WORKER_STOP_SECONDS = 1.0


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: no dlopen after fork


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _DetachedPopen(subprocess.Popen):
    """`subprocess.Popen` for TFF's worker: output detached, dies with its parent.

    TFF stops its worker with SIGINT followed by ``wait()`` without a timeout
    (in a finalizer); a worker that does not exit on SIGINT, e.g. one whose
    gRPC server still drains calls on a loaded machine, then blocks the job
    forever after its results are written. Here a wait without a timeout
    gives the worker `WORKER_STOP_SECONDS`, then kills it.
    """

    def __init__(self, args, **kwargs):
        log = os.environ.get("DPFED_WORKER_LOG")
        sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        kwargs.update(stdout=sink, stderr=sink, stdin=subprocess.DEVNULL)
        kwargs["preexec_fn"] = _die_with_parent
        super().__init__(args, **kwargs)

    def wait(self, timeout=None):
        if timeout is not None:
            return super().wait(timeout)
        try:
            return super().wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            return super().wait()


class _DetachedWorkerSubprocess:
    """Stands in for the ``subprocess`` module inside TFF's executor factory."""

    Popen = _DetachedPopen

    def __getattr__(self, name):
        return getattr(subprocess, name)


def _install_worker_patch() -> None:
    executor_factory.subprocess = _DetachedWorkerSubprocess()


def worker_processes() -> list[psutil.Process]:
    """Returns this process's live ``worker_binary`` descendants."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == WORKER_NAME or WORKER_NAME in " ".join(child.cmdline()[:1]):
                found.append(child)
    return found


def reap_workers(timeout: float = 1.0) -> int:
    """Stops every ``worker_binary`` this process started; returns how many.

    SIGTERM first; a worker still alive after ``timeout`` seconds (a busy one can
    take several) gets SIGKILL: it holds no state dpfed needs.
    """
    workers = worker_processes()
    for proc in workers:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(workers, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return len(workers)


def _release_at_exit() -> None:
    # Drop TFF's contexts while the interpreter is intact: their finalizers
    # otherwise run during teardown and fail noisily on half-torn-down modules.
    set_no_default_context()
    gc.collect()
    reap_workers()


def _ignore_reaped_worker(unraisable) -> None:
    """Drops the error of TFF's executor finalizer signalling a worker dpfed already stopped.

    After an interruption (SIGTERM, Ctrl-C) the executor can outlive `tff_runtime`,
    held by the exception's frames, and its ``__del__`` then sends SIGINT to the
    worker that was reaped: a harmless ``ProcessLookupError`` Python would print
    as a traceback. Everything else goes to the default hook.
    """
    if (
        isinstance(unraisable.exc_value, ProcessLookupError)
        and getattr(unraisable.object, "__module__", "") == executor_factory.__name__
    ):
        return
    _default_unraisablehook(unraisable)


_default_unraisablehook = sys.unraisablehook
_install_worker_patch()
sys.unraisablehook = _ignore_reaped_worker
atexit.register(_release_at_exit)


@contextlib.contextmanager
def tff_runtime() -> Iterator[None]:
    """Sets a fresh local TFF execution context and reaps its worker on exit.

    Each call gives a clean TFF state (a new context and a new worker), which is
    what every job of a multirun sweep needs.
    """
    reap_workers()
    tff.framework.set_default_context(tff.backends.native.create_sync_local_cpp_execution_context())
    try:
        yield
    finally:
        # Dropping the context lets TFF stop its own worker; reaping covers the
        # cases where its finalizer does not run.
        set_no_default_context()
        gc.collect()
        reap_workers()


DEVICES = ("auto", "cpu", "gpu")


def configure_device(device: str) -> None:
    """Makes TensorFlow use the CPU, a GPU, or whatever it finds (``auto``).

    Raises:
        ConfigError: naming ``device`` (relative to ``sim``).
    """
    import tensorflow as tf

    from dpfed.errors import ConfigError

    if str(device) not in DEVICES:
        raise ConfigError("device", device, f"one of {', '.join(DEVICES)}")
    gpus = tf.config.list_physical_devices("GPU")
    if str(device) == "gpu" and not gpus:
        raise ConfigError("device", device, "cpu or auto: TensorFlow sees no GPU here")
    if str(device) == "cpu":
        # TFF runs client work in its worker process, which inherits the environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        if gpus:
            with contextlib.suppress(RuntimeError):  # already initialised in this process
                tf.config.set_visible_devices([], "GPU")
