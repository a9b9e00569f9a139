"""RoPE frequencies and attention scaling equal transformers' for every rope_scaling we accept."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from bolmo.config import parse_rope_scaling
from bolmo.errors import ConfigError
from bolmo.nn.rope import inverse_frequencies

HEAD_DIM, THETA, MAX_POS = 32, 10_000.0, 256


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16, "beta_slow": 2,
     "truncate": False},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "attention_factor": 1.3},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.8,
     "mscale_all_dim": 0.5},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0},
])
def test_frequencies_and_scaling_equal_transformers(scaling):
    size = dict(hidden_size=HEAD_DIM * 4, num_attention_heads=4, max_position_embeddings=MAX_POS)
    if transformers.__version__.startswith("4."):
        hf = transformers.Olmo3Config(**size, rope_theta=THETA, rope_scaling=dict(scaling))
    else:  # one flat rope_parameters (5.x reads `truncate` only from there, not from Olmo 3's per-layer ones)
        hf = transformers.Olmo2Config(**size, rope_parameters={**scaling, "rope_theta": THETA})
    expected_freq, expected_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    freq, scale = inverse_frequencies(parse_rope_scaling(scaling, THETA, MAX_POS, "config.json"), HEAD_DIM)
    torch.testing.assert_close(freq, expected_freq.float(), atol=0, rtol=1e-6)
    assert scale == pytest.approx(expected_scale, rel=1e-12)


def test_rope_scaling_without_a_type_is_refused():
    with pytest.raises(ConfigError, match="rope_type"):
        parse_rope_scaling({"factor": 4.0}, THETA, MAX_POS, "config.json")
