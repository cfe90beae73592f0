"""GRU stacks: the textbook model, per-step outputs, regression heads, mismatches."""

from __future__ import annotations

import pytest
import tensorflow as tf
from hydra.utils import instantiate

from dpfed.build import config_group
from dpfed.data.synthetic import Finance, SmartHome
from dpfed.errors import ConfigError
from tests.conftest import compose_config
from tests.data.test_synthetic import make


def test_textbook_model_is_one_config_away():
    cfg = compose_config("model=textbook")
    model = instantiate(cfg.model).bind(make(SmartHome, seq_len=28, num_features=28))
    keras = model.keras_model()
    grus = [layer for layer in keras.layers if isinstance(layer, tf.keras.layers.GRU)]
    assert [g.units for g in grus] == [128, 128]
    assert [g.return_sequences for g in grus] == [True, False]
    assert keras.layers[-1].units == 10 and keras.output_shape == (None, 10)


def test_every_step_outputs_match_every_step_labels():
    data = make(SmartHome, labels="every_step")
    model = instantiate(compose_config("dataset.labels=every_step").model).bind(data)
    keras = model.keras_model()
    x, y = data.train.arrays(0)
    assert keras(x).shape == (len(x), data.seq_len, 2)
    assert model.loss()(y, keras(x)).shape == ()


def test_regression_head_predicts_one_number_per_sequence():
    data = make(Finance, target="return")
    model = instantiate(compose_config("model.units=[8,8]", "model.dropout=0.1").model).bind(data)
    keras = model.keras_model()
    x, _ = data.train.arrays(0)
    assert keras(x).shape == (len(x),)
    assert model.metrics()[0].name == "mae"


def test_outputs_must_match_labels():
    model = instantiate(compose_config("model.outputs=every_step").model)
    with pytest.raises(ConfigError, match="outputs"):
        model.bind(make(SmartHome))


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.units=[]", "units"),
        ("model.dropout=1.0", "dropout"),
        ("model.head_units=1", "head_units"),
    ],
)
def test_bad_model_settings_name_the_key(override, key):
    with pytest.raises(ConfigError) as err, config_group("model"):
        instantiate(compose_config(override).model).bind(make(SmartHome))
    assert err.value.key == f"model.{key}"


def test_text_datasets_get_an_embedding_and_a_vocabulary_wide_head():
    from dpfed.data.shakespeare import VOCAB_SIZE, Shakespeare

    data = Shakespeare(seq_len=12, num_clients=3, examples_mean=6, eval_fraction=0.2, seed=0)
    cfg = compose_config("dataset=shakespeare", "model.units=[8,8]", "model.embedding_dim=5")
    model = instantiate(cfg.model).bind(data)
    keras = model.keras_model()
    assert [layer.name for layer in keras.layers[1:]] == ["embedding", "gru_0", "gru_1", "head"]
    assert keras.get_layer("embedding").output_shape == (None, 12, 5)
    assert model.input_spec[0] == tf.TensorSpec([None, 12], tf.int32)
    x, y = data.train.arrays(0)
    assert keras(x).shape == (len(x), 12, VOCAB_SIZE)
    assert model.loss()(y, keras(x)).shape == ()
    unrolled = model.keras_model(unroll=True)
    assert [v.shape for v in unrolled.trainable_variables] == [
        v.shape for v in keras.trainable_variables
    ]
