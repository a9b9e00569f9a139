"""Config round trips and presets; boundary threshold modes of the predictor."""

from __future__ import annotations

import math

import pytest
import torch

from bolmo.config import BolmoConfig, parse_boundary_threshold
from bolmo.errors import ConfigError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.local import FORCE_OFF, BoundaryPredictor


@pytest.mark.parametrize("preset, total", [("bolmo-1b", 1_468_911_776), ("bolmo-7b", 7_633_084_576)])
def test_presets_have_the_released_parameter_counts(preset, total):
    with torch.device("meta"):
        model = BolmoForCausalLM(BolmoConfig.preset(preset))
    counts = model.num_parameters_by_component()
    assert counts["total"] == total  # docs/architecture.md §8
    assert counts["lm_head"] == 520 * model.config.hidden_size


def test_config_round_trip(tiny_model_dir):
    config = BolmoConfig.from_file(tiny_model_dir / "config.json")
    again = BolmoConfig.from_dict(config.to_dict())
    assert again == config
    assert config.transformer_spec().window(0) == 8 and config.transformer_spec().window(3) is None


def test_unknown_preset_and_threshold_are_named():
    with pytest.raises(ConfigError, match="nope"):
        BolmoConfig.preset("nope")
    for bad in ("sample:0.5", "topk:-1", "topk_percent:2", "threshold"):
        with pytest.raises(ConfigError, match="boundary_threshold"):
            parse_boundary_threshold(bad)


def predictor(threshold: str) -> BoundaryPredictor:
    return BoundaryPredictor(4, 1, parse_boundary_threshold(threshold))


LP = torch.tensor([[0.0, math.log(0.9), math.log(0.2), math.log(0.6), math.log(0.4), FORCE_OFF]])


def test_sample0_is_strictly_above_one_half():
    mask = predictor("sample:0").decide(LP)
    assert mask.tolist() == [[True, True, False, True, False, False]]
    exactly_half = torch.tensor([[0.0, math.log(0.5)]], dtype=torch.float32)
    assert predictor("sample:0").decide(exactly_half).tolist() == [[True, False]]


def test_topk_keeps_the_k_most_likely_per_row():
    assert predictor("topk:3").decide(LP).tolist() == [[True, True, False, True, False, False]]
    assert predictor("topk_percent:0.5").decide(LP).tolist() == [[True, True, False, True, False, False]]
    # with right padding the quantile is over the real positions only
    lengths = torch.tensor([4])
    assert predictor("topk:2").decide(LP, lengths).tolist() == [[True, True, False, False, False, False]]


def test_sample1_draws_bernoulli_with_a_generator():
    lp = torch.full((1, 4000), math.log(0.25))
    lp[:, 0] = 0.0
    g = torch.Generator().manual_seed(0)
    mask = predictor("sample:1").decide(lp, generator=g)
    assert mask[0, 0] and abs(mask[0, 1:].float().mean().item() - 0.25) < 0.03
    again = predictor("sample:1").decide(lp, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_logprobs_force_bos_on_and_tail_off():
    p = predictor("sample:0")
    h = torch.randn(2, 5, 4)
    lp = p.logprobs(h, lengths=torch.tensor([5, 3]))
    assert lp[:, 0].tolist() == [0.0, 0.0]
    assert lp[0, 4] == FORCE_OFF  # no lookahead byte for the last real position
    assert lp[1, 2:].tolist() == [FORCE_OFF] * 3  # last real byte and right padding
    assert (lp[0, 1:4] <= 0).all() and (lp[0, 1:4] > FORCE_OFF).all()
