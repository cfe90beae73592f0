"""Schemas of the ``model`` options."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpfed.data.schemas import Labels


@dataclass
class GRUConfig:
    """Stacked GRU with a dense head.

    Attributes:
        units: units of each GRU layer, bottom to top.
        dropout: dropout rate between layers and before the head, in [0, 1).
        outputs: ``last`` (one output per sequence) or ``every_step``; must match
            the dataset's ``labels``.
        head_units: width of the output layer; ``null`` takes the dataset's
            number of classes (or 1 for regression). The textbook model uses 10.
        embedding_dim: width of the character embedding in front of the GRUs
            when the dataset is text (has a ``vocab_size``); 8 as in TFF's
            Shakespeare model. Unused for numeric features.
    """

    _target_: str = "dpfed.models.gru.GRUModel"
    units: list[int] = field(default_factory=lambda: [32])
    dropout: float = 0.0
    outputs: Labels = "${dataset.labels}"  # type: ignore[assignment]
    head_units: int | None = None
    embedding_dim: int = 8


SCHEMAS = {"gru": GRUConfig}
