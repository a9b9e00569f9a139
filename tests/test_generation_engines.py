"""The one decoding loop over its two engines: per-row sampling parameters, raw-byte prompts,
subword token boundaries in `--show-patches`, and `bolmo info` on every loadable directory."""

from __future__ import annotations

import json

import pytest
import torch

import bolmo
from bolmo.cli import main
from bolmo.errors import GenerationError
from bolmo.generation import generate_ids
from bolmo.generation.bolmo_engine import BolmoEngine
from bolmo.generation.engine import Engine
from bolmo.generation.olmo_engine import OlmoEngine
from bolmo.generation.sampling import RowSampler, SamplingParams
from conftest import CKPT_FIXTURES, load_fixture_model
from olmo_helpers import build_hf_model, save_hf_model


@pytest.fixture(scope="module")
def olmo_dir(tmp_path_factory):
    return save_hf_model(build_hf_model("olmo3"), tmp_path_factory.mktemp("olmo3"))


def test_both_model_families_plug_into_the_same_loop(tiny_model_dir, olmo_dir):
    assert isinstance(BolmoEngine(load_fixture_model(tiny_model_dir)), Engine)
    assert isinstance(OlmoEngine(bolmo.load(olmo_dir)), Engine)


def test_rows_with_different_sampling_parameters_sample_as_if_alone():
    """A server batches requests with their own temperature/top-k/top-p/seed: each row must draw
    exactly what a sampler holding only that row draws."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    rows = [(SamplingParams(), None), (SamplingParams(0.8, seed=3), 3), (SamplingParams(1.3, top_k=5), 11),
            (SamplingParams(0.8, seed=3), 4)]
    mixed = RowSampler(device="cpu")
    alone = []
    for params, seed in rows:
        mixed.add_row(params, seed)
        single = RowSampler(device="cpu")
        single.add_row(params, seed)
        alone.append(single)
    for step in range(20):
        together = mixed(logits + step).tolist()
        assert together == [int(s(logits[r : r + 1] + step)) for r, s in enumerate(alone)]
    assert together[0] == int((logits[0] + 19).argmax())  # the greedy row stays greedy


def test_a_plain_batch_sampler_seeds_row_r_with_seed_plus_r():
    batch = RowSampler(SamplingParams(1.0, seed=40), 3)
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(1))
    expected = []
    for r in range(3):
        single = RowSampler(SamplingParams(1.0, seed=40 + r), 1)
        expected.append(int(single(logits[r : r + 1])))
    assert batch(logits).tolist() == expected


def test_bolmo_reads_raw_byte_prompts_as_they_are(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    text = generate_ids(model, ["Hello"], max_new_bytes=12)[0]
    raw = generate_ids(model, [b"Hello"], max_new_bytes=12)[0]
    assert (raw.data, raw.boundaries, raw.prompt_boundaries) == (text.data, text.boundaries, text.prompt_boundaries)
    invalid = generate_ids(model, [b"\xff\xfe ok"], max_new_bytes=8)[0]  # not UTF-8: still a valid byte prompt
    assert invalid.prompt == b"\xff\xfe ok" and len(invalid.prompt_boundaries) == 5 and len(invalid.data) == 8


def test_subword_models_need_utf8_prompts(olmo_dir):
    with pytest.raises(GenerationError, match="UTF-8"):
        generate_ids(bolmo.load(olmo_dir), [b"\xff"], max_new_bytes=4)


def test_subword_boundaries_are_token_ends(olmo_dir):
    model = bolmo.load(olmo_dir)
    prompt = "def main():\n    return 1"
    result = generate_ids(model, [prompt], max_new_bytes=20)[0]
    tokens = model.tokenizer.encode(prompt)[1:]
    ends, total = [], 0
    for token in tokens:
        total += len(model.tokenizer.decode_bytes([token]))
        ends.append(total - 1)
    assert [i for i, b in enumerate(result.prompt_boundaries) if b] == ends
    assert len(result.prompt_boundaries) == len(prompt.encode())
    assert len(result.boundaries) == len(result.data) == 20
    assert result.boundaries[-1] in (True, False) and sum(result.boundaries) >= 20 // max(
        len(model.tokenizer.decode_bytes([t])) for t in range(len(model.tokenizer)))


def test_cli_show_patches_marks_token_boundaries_for_subword_models(olmo_dir, capsys):
    model = bolmo.load(olmo_dir)
    assert main(["generate", "The quick brown fox", "--model", str(olmo_dir), "--max-new-bytes", "10",
                 "--show-patches"]) == 0
    captured = capsys.readouterr()
    prompt_tokens = [model.tokenizer.decode([t]) for t in model.tokenizer.encode("The quick brown fox")[1:]]
    assert captured.out.startswith("|".join(prompt_tokens) + "|")
    assert captured.out.replace("|", "").rstrip("\n") == "The quick brown fox" + model.generate(
        ["The quick brown fox"], max_new_bytes=10)[0]
    assert " tokens (" in captured.err


@pytest.mark.parametrize("source", ["hf", "olmo-core"])
def test_info_works_on_subword_directories(olmo_dir, source, capsys):
    path = olmo_dir if source == "hf" else CKPT_FIXTURES / "olmo3"
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = bolmo.load(path)
    assert report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["config"]["model_type"] == "olmo3"
    assert report["format"] == ("olmo3" if source == "hf" else "olmo-core")
    assert main(["info", str(path)]) == 0
    assert "token embedding" in capsys.readouterr().out
