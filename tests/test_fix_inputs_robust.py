"""Bad inputs are one BolmoError naming what is wrong, never a torch traceback or a silent NaN: the
model's forward, empty texts in `score` and `eval bpb`, NaN in result JSON, out-of-range ids in
`decode`, and prompt cuts that would split a UTF-8 character."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import bolmo
from bolmo.cli import main
from bolmo.errors import (BolmoError, BolmoWarning, ContextWarning, GenerationError, InputError, ScoringError,
                          TokenizerError)
from bolmo.eval.bpb import bits_per_byte
from bolmo.eval.documents import Document
from bolmo.eval.engine import Scorer
from bolmo.eval.report import write_json
from bolmo.generation.driver import generate_ids
from conftest import load_fixture_model

IDS = torch.tensor([[1, 40, 41]])
MASK = torch.ones(1, 3, dtype=torch.bool)


@pytest.fixture()
def short_model(tmp_path, tiny_model_dir):
    """The tiny model, its config claiming only 16 positions (prompts of more than 11 bytes are cut
    when 4 new bytes are asked for)."""
    dst = tmp_path / "short"
    shutil.copytree(tiny_model_dir, dst, ignore=shutil.ignore_patterns("cases.*"))
    config = json.loads((dst / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (dst / "config.json").write_text(json.dumps(config))
    return bolmo.load(dst)


# ------------------------------------------------------------------------------- forward inputs
@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.tensor([[]], dtype=torch.long),), {}, r"input_ids is empty \(shape \(1, 0\)\)"),
    ((torch.zeros(0, 3, dtype=torch.long),), {}, "input_ids is empty"),
    ((torch.tensor([[1, 520]]),), {}, r"\[0, 520\), got ids from 1 to 520"),
    ((torch.tensor([[1, -1]]),), {}, r"\[0, 520\), got ids from -1 to 1"),
    ((torch.tensor([[1.0, 40.0]]),), {}, "integer ids.*float32"),
    ((torch.tensor([[True]]),), {}, "integer ids.*bool"),
    ((torch.tensor([1, 40]),), {}, r"\[batch, length\], got shape \(2,\)"),
    (([[1, 40]],), {}, "input_ids must be a torch.Tensor, got list"),
    ((IDS,), {"attention_mask": torch.ones(1, 4, dtype=torch.bool)}, r"attention_mask has shape \(1, 4\)"),
    ((IDS,), {"attention_mask": [[1, 1, 1]]}, "attention_mask must be a torch.Tensor"),
    ((IDS,), {"boundary_mask": torch.ones(2, 3, dtype=torch.bool)}, r"boundary_mask has shape \(2, 3\)"),
    ((IDS,), {"expanded_ids": torch.zeros(1, 2, dtype=torch.long)}, r"expanded_ids has shape \(1, 2\)"),
    ((IDS,), {"attention_mask": torch.tensor([[True, False, True]])}, "contiguous"),
])
def test_bad_forward_inputs_are_one_input_error(tiny_model_dir, args, kwargs, message):
    model = load_fixture_model(tiny_model_dir)
    with torch.no_grad(), pytest.raises(InputError, match=message) as raised:
        model(*args, **kwargs)
    assert isinstance(raised.value, BolmoError) and isinstance(raised.value, ValueError)  # old callers keep working


def test_other_integer_ids_run_as_long(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    with torch.no_grad():
        expected = model(IDS, attention_mask=MASK).logits
        for dtype in (torch.int32, torch.int16, torch.uint8):
            torch.testing.assert_close(model(IDS.to(dtype), attention_mask=MASK).logits, expected)
        model(torch.tensor([[1, 519]]))  # the last id of the vocabulary is accepted


# ------------------------------------------------------------------------------- empty texts, NaN JSON
def test_bpb_skips_empty_documents_with_a_warning_and_refuses_only_empty(tiny_model_dir):
    scorer = Scorer(load_fixture_model(tiny_model_dir), batch_size=2)
    docs = [Document("a", "web", "Some text."), Document("b", "web", ""), Document("c", "blank", "")]
    with pytest.warns(BolmoWarning, match="skipped 2 empty document.*b, c"):
        result = bits_per_byte(scorer, docs)
    assert [d["id"] for d in result["documents"]] == ["a"] and result["skipped_empty"] == ["b", "c"]
    assert result["sources"]["blank"] == {"documents": 0, "bytes": 0, "nats": 0.0, "bits_per_byte": None}
    assert result["macro"] == result["sources"]["web"]["bits_per_byte"] == result["overall"]["bits_per_byte"]
    json.dumps(result, allow_nan=False)
    with pytest.raises(ScoringError, match="b, c: empty, nothing to score"):
        bits_per_byte(scorer, docs[1:])


def test_cli_eval_bpb_refuses_an_empty_file_and_writes_strict_json(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "full.txt").write_text("Hello there.")
    out = tmp_path / "bpb.json"
    args = ["--model", str(tiny_model_dir), "--output", str(out), "--no-progress"]
    assert main(["eval", "bpb", str(tmp_path / "empty.txt"), *args]) == 2
    err = capsys.readouterr().err
    assert "empty.txt: empty, nothing to score" in err and err.count("\n") == 1 and not out.exists()
    assert main(["eval", "bpb", str(tmp_path / "empty.txt"), str(tmp_path / "full.txt"), *args]) == 0
    assert "skipped 1 empty document" in capsys.readouterr().err

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    data = json.loads(out.read_text(), parse_constant=no_constants)
    assert data["results"][str(tiny_model_dir)]["skipped_empty"] == [str(tmp_path / "empty.txt")]


def test_write_json_refuses_nan_naming_the_field(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(BolmoError, match=r"out.json: not written, results\.m\.scores\.1 is not a finite number"):
        write_json(path, {"results": {"m": {"scores": [1.0, float("nan")]}}})
    assert not path.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("ids,message", [([1, 7600], r"ids\[1\] = 7600 is not a token id"),
                                         ([44, -1], r"ids\[1\] = -1 is not a token id"),
                                         ([520], r"ids\[0\] = 520"), ([44, 4.0], r"ids\[1\] is a float")])
def test_decode_refuses_ids_outside_the_vocabulary(tiny_model_dir, ids, message):
    tokenizer = load_fixture_model(tiny_model_dir).tokenizer
    with pytest.raises(TokenizerError, match=message):
        tokenizer.decode(ids)


def test_decode_still_takes_every_valid_id(tiny_model_dir):
    tokenizer = load_fixture_model(tiny_model_dir).tokenizer
    assert tokenizer.decode([0, 1, 2, 3, 4 + 65, 260 + 4 + 66, 519]) == "AB\ufffd"  # 519: byte 255, fused
    assert tokenizer.decode(torch.tensor([1, 4 + 67])) == "C"  # 0-d tensors are ids too


def test_subword_model_forward_refuses_ids_outside_the_vocabulary():
    model = bolmo.load("default-teacher")
    with pytest.raises(InputError, match=rf"input_ids must be in \[0, {model.config.vocab_size}\)"):
        model(torch.tensor([[1, model.config.vocab_size]]))
    with pytest.raises(InputError, match="attention_mask has shape"):
        model(torch.tensor([[1, 2]]), torch.ones(1, 3, dtype=torch.bool))


def test_subword_decode_refuses_ids_outside_the_vocabulary():
    tokenizer = bolmo.load("default-teacher").tokenizer
    assert tokenizer.decode(tokenizer.encode("def f():")).endswith("def f():")
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(TokenizerError, match=rf"ids\[1\] = {bad} is not a token id"):
            tokenizer.decode([5, bad])


# ------------------------------------------------------------------------------- prompt cuts
@pytest.mark.parametrize("prompt,kept", [
    ("é" * 20, "é" * 5),  # the last 11 bytes start inside an é: 1 more byte dropped
    ("😀" * 10, "😀" * 2),  # ... inside a 4-byte character: 3 more dropped
    ("a" + "é" * 20, "é" * 5),
    ("abé" * 10, "béabéabé"),  # the cut falls on a character start: nothing more dropped
])
def test_a_cut_prompt_starts_on_a_whole_character(short_model, prompt, kept):
    with pytest.warns(ContextWarning, match=f"kept its last {len(kept.encode())} of {len(prompt.encode())} bytes"):
        result = generate_ids(short_model, [prompt], max_new_bytes=4)[0]
    assert result.prompt == kept.encode()


def test_a_cut_never_drops_more_than_three_extra_bytes(short_model):
    with pytest.warns(ContextWarning, match="kept its last 8 of 40 bytes"):
        result = generate_ids(short_model, [b"\x80" * 40], max_new_bytes=4)[0]  # only continuation bytes
    assert result.prompt == b"\x80" * 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits is not touched
        assert generate_ids(short_model, [b"\x80" * 11], max_new_bytes=4)[0].prompt == b"\x80" * 11


@pytest.mark.parametrize("entry", ["generate", "stream", "score"])
def test_warnings_point_at_the_callers_line(short_model, entry):
    """Whichever entry point (a generator underneath or not), a warning names the user's file."""
    with pytest.warns(BolmoWarning) as caught:
        if entry == "generate":
            short_model.generate(["x" * 100], max_new_bytes=2)
        elif entry == "stream":
            list(short_model.stream("x" * 100, max_new_bytes=2))
        else:
            short_model.score(["", "ab"])
    assert {Path(w.filename).name for w in caught} == {Path(__file__).name}


def test_prompts_may_be_any_iterable_and_stream_checks_at_the_call(short_model):
    import numpy as np

    expected = short_model.generate(["ab", "c"], max_new_bytes=3)
    assert short_model.generate((p for p in ["ab", "c"]), max_new_bytes=3) == expected
    assert short_model.generate(np.array(["ab", "c"]), max_new_bytes=3) == expected
    assert short_model.generate(("ab", "c"), max_new_bytes=3) == expected
    with pytest.raises(GenerationError, match="prompts must be a list of strings, got int"):
        short_model.generate(3, max_new_bytes=3)
    with pytest.raises(GenerationError, match="max_new_bytes"):
        short_model.stream("x", max_new_bytes=-1)  # not at the first next()


def test_a_half_read_stream_leaves_no_noise_at_exit(tmp_path):
    """A suspended decode used to print 'Exception ignored in: <generator object decode ...>' when
    the interpreter closed it after torch's globals were gone."""
    script = ("import bolmo\n"
              "m = bolmo.load('default')\n"
              "it = m.stream('The json module', max_new_bytes=100)\n"
              "print(next(it) is not None)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "True"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_eval_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    text = tmp_path / "doc.txt"
    text.write_text("hello bytes")
    for output, message in ((tmp_path / "file" / "x.json", "is not a directory"),
                            (tmp_path, "is a directory; give a file name")):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "bpb", str(text), "--output", str(output), "--no-progress"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert main(["eval", "bpb", str(text), "--output", str(tmp_path / "new" / "r.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "new" / "r.json").read_text())  # missing directories are created


def test_write_json_failure_is_one_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(BolmoError, match="cannot write the results \\(No space left on device\\)"):
        write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
