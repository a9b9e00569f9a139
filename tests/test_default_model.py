"""The bundled default model (made by recipes/toy/run.sh) loads without arguments, is small,
has its model card, and is a trained model rather than random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import bolmo
from bolmo.cli import main
from bolmo.inference import Olmo
from bolmo.loading import BUNDLED_MODELS, DEFAULT_MODEL_DIR


def test_bundled_model_is_small_and_documented():
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20  # the 20 MB budget
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "bits per byte" in card and "{" not in card  # every placeholder of the card filled in
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "bolmo"


def test_load_without_arguments_scores_like_a_trained_model():
    model = bolmo.load()
    text = ("The :mod:`json` module provides an API similar to :mod:`pickle` for converting the "
            "in-memory objects in Python to a serialized representation.")
    result = model.score([text])[0]
    # Uniform guessing over bytes is 8 bits per byte and the random fixture model scores ~8.3;
    # the toy model reaches well under 3 on documentation prose.
    assert result.bits_per_byte < 3.5


def test_generate_with_the_default_model_is_deterministic_text():
    model = bolmo.load()
    first = model.generate(["The Python standard library"], max_new_bytes=64)[0]
    again = model.generate(["The Python standard library"], max_new_bytes=64)[0]
    assert first == again and len(first.encode("utf-8")) == 64
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in first)
    assert printable >= 0.9 * len(first)


def test_cli_generate_and_info_default_to_the_bundled_model(capsys):
    assert main(["info", "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["parameters"]["total"]
    assert total == sum(p.numel() for p in bolmo.load().parameters()) == 2_446_888
    assert main(["generate", "Python is", "--max-new-bytes", "16", "--show-patches"]) == 0
    out = capsys.readouterr().out
    assert "|" in out  # patch separators when stdout is not a terminal
    with torch.no_grad():
        assert bolmo.load().tokenizer.decode(bolmo.load().tokenizer.encode("ok")) == "ok"


def test_bundled_teacher_loads_by_name_and_is_the_default_models_teacher():
    files = [p for p in BUNDLED_MODELS["default-teacher"].rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    card = (BUNDLED_MODELS["default-teacher"] / "README.md").read_text()
    assert "bits per byte" in card and "{" not in card
    teacher = bolmo.load("default-teacher")
    assert isinstance(teacher, Olmo) and teacher.tokenizer is not None
    student = bolmo.load("default")
    # Byteifying keeps the teacher's width, depth and heads, and seeds the subword table from its vocabulary.
    assert (teacher.config.hidden_size, teacher.config.num_hidden_layers) == (
        student.config.hidden_size, student.config.num_hidden_layers)
    assert teacher.config.vocab_size == student.config.subword_vocab_size
    text = ("The :mod:`json` module provides an API similar to :mod:`pickle` for converting the "
            "in-memory objects in Python to a serialized representation.")
    assert teacher.score([text])[0].bits_per_byte < 3.5  # trained, like its student


def test_eval_cute_compares_the_bundled_model_with_its_teacher(tmp_path):
    out = tmp_path / "cute.json"
    code = main(["eval", "cute", "--model", "default", "--model", "default-teacher", "--data",
                 str(Path(__file__).parent / "fixtures" / "cute"), "--tasks", "spell", "--limit", "1",
                 "--max-new-bytes", "4", "--no-progress", "--output", str(out),
                 "--chart", str(tmp_path / "cute.png")])
    assert code == 0
    assert len(json.loads(out.read_text())["accuracy"]) == 2  # one column per model


def test_bundled_configs_give_the_context_they_were_trained_on():
    """max_position_embeddings is what recipes/toy trained on (576-byte Bolmo sequences, 128-token
    teacher sequences), not the initial config's 4096: scoring windows and prompt cuts follow it."""
    import yaml

    recipes = Path(__file__).resolve().parents[1] / "recipes" / "toy"
    stage2 = yaml.safe_load((recipes / "stage2.yaml").read_text())
    teacher = yaml.safe_load((recipes / "teacher.yaml").read_text())
    assert bolmo.load().config.context_positions == stage2["data"]["seq_len"] == 576
    assert bolmo.load("default-teacher").config.context_positions == teacher["data"]["tokens_per_instance"] == 128
    for name, positions in (("default", "576"), ("default-teacher", "128")):
        card = (BUNDLED_MODELS[name] / "README.md").read_text()
        assert f"gives {positions} positions" in card
