"""The private APIs of other packages that dpfed relies on exist in the versions it pins.

Each one is used in one place (the ``where`` of `PRIVATE_APIS`, which says so beside the use).
An upgrade that moves or drops one fails here, naming the place to fix, before a run fails.
"""

from __future__ import annotations

from importlib import import_module, metadata

import pytest

# (package, version prefix checked, module, attribute, where dpfed uses it)
PRIVATE_APIS = [
    (
        "hydra-core",
        "1.3.",
        "hydra._internal.core_plugins.basic_sweeper",
        "BasicSweeper.split_arguments",
        "dpfed/report/experiments.py: sweep_points",
    ),
    (
        "tensorflow-federated",
        "0.87.0",
        "tensorflow_federated.python.core.impl.executor_stacks.executor_factory",
        "subprocess",
        "dpfed/runtime.py: _install_worker_patch",
    ),
    (
        "tensorflow-federated",
        "0.87.0",
        "tensorflow_federated.python.core.impl.context_stack.set_default_context",
        "set_no_default_context",
        "dpfed/runtime.py: tff_runtime, _release_at_exit",
    ),
]


@pytest.mark.parametrize(
    ("package", "version", "module", "attribute", "where"),
    PRIVATE_APIS,
    ids=[api[3] for api in PRIVATE_APIS],
)
def test_a_private_api_exists_in_the_pinned_version(package, version, module, attribute, where):
    """The package is the version checked, and the module still has the attribute."""
    assert metadata.version(package).startswith(version), (
        f"{package} {metadata.version(package)}: recheck its private API used in {where}"
    )
    found = import_module(module)
    for name in attribute.split("."):
        assert hasattr(found, name), f"{module}.{attribute} is gone: fix {where}"
        found = getattr(found, name)


def test_the_pld_accountant_keeps_the_fields_incremental_pld_reads():
    """dpfed.privacy.accounting.IncrementalPLD reads a composed PLDAccountant's ``_pld`` and
    ``_contains_non_dp_event`` (dp-accounting 0.4.3): a private event's distribution, and
    whether a non-private event made it infinite."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant, privacy_loss_distribution

    assert metadata.version("dp-accounting") == "0.4.3"
    private = PLDAccountant()
    private.compose(dp_accounting.GaussianDpEvent(1.0))
    assert isinstance(private._pld, privacy_loss_distribution.PrivacyLossDistribution)
    assert private._contains_non_dp_event is False
    non_private = PLDAccountant()
    non_private.compose(dp_accounting.NonPrivateDpEvent())
    assert non_private._contains_non_dp_event is True
