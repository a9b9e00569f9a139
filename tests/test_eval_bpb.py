"""Paloma-style bits per byte: documents from files, directories and JSONL; totals per document,
source and overall; `bolmo eval bpb` with a Bolmo and a subword model side by side."""

from __future__ import annotations

import json
import math

import pytest

from bolmo.cli import main
from bolmo.errors import BolmoError
from bolmo.eval.bpb import bits_per_byte
from bolmo.eval.documents import collect_documents
from bolmo.eval.engine import Scorer
from conftest import load_fixture_model
from eval_helpers import tiny_olmo_dir


@pytest.fixture()
def corpus(tmp_path):
    (tmp_path / "web" / "news").mkdir(parents=True)
    (tmp_path / "web" / "a.txt").write_text("The quick brown fox jumps over the lazy dog.")
    (tmp_path / "web" / "news" / "b.txt").write_text("Größe 大小 matters.")
    (tmp_path / "web" / ".hidden").write_text("skipped")
    rows = [{"text": "def f(x):\n    return x\n", "source": "code", "id": "c1"},
            {"text": "print('hi')", "source": "code"},
            {"text": "Ein kurzer Satz."}]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "single.md").write_text("# Title\n")
    return tmp_path


def test_documents_and_their_sources(corpus):
    docs = collect_documents([corpus / "web", corpus / "mixed.jsonl", corpus / "single.md"])
    assert [(d.source, d.text[:5]) for d in docs] == [
        ("web", "The q"), ("news", "Größe"), ("code", "def f"), ("code", "print"), ("mixed", "Ein k"),
        ("single", "# Tit")]
    assert docs[2].doc_id == "c1" and docs[3].doc_id == "mixed.jsonl:2"
    (corpus / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(BolmoError, match="bad.jsonl: line 1 has no string field 'text'"):
        collect_documents([corpus / "bad.jsonl"])
    with pytest.raises(BolmoError, match="no such file"):
        collect_documents([corpus / "missing.txt"])


def test_totals_per_document_source_and_overall(corpus, tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    docs = collect_documents([corpus / "mixed.jsonl", corpus / "web"])
    result = bits_per_byte(Scorer(model, batch_size=2), docs)
    reference = model.score([d.text for d in docs])
    for row, ref in zip(result["documents"], reference):
        assert row["bytes"] == ref.n_bytes
        assert row["nats"] == pytest.approx(ref.nats, abs=2e-4)
    code = [r for r, d in zip(reference, docs) if d.source == "code"]
    assert result["sources"]["code"]["bits_per_byte"] == pytest.approx(
        sum(r.nats for r in code) / math.log(2) / sum(r.n_bytes for r in code), abs=1e-5)
    assert result["overall"]["bits_per_byte"] == pytest.approx(
        sum(r.nats for r in reference) / math.log(2) / sum(r.n_bytes for r in reference), abs=1e-5)
    per_source = [s["bits_per_byte"] for s in result["sources"].values()]
    assert result["macro"] == pytest.approx(sum(per_source) / len(per_source))
    assert set(result["sources"]) == {"code", "mixed", "web", "news"}


def test_cli_bolmo_and_subword_side_by_side(corpus, tiny_model_dir, tmp_path_factory, capsys):
    olmo = tiny_olmo_dir(tmp_path_factory.mktemp("olmo"))
    out = corpus / "bpb.json"
    code = main(["eval", "bpb", str(corpus / "web"), str(corpus / "mixed.jsonl"), "--model", str(tiny_model_dir),
                 "--model", str(olmo), "--per-document", "--output", str(out)])  # with the progress bar
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == [str(tiny_model_dir), str(olmo)]
    import bolmo

    subword = bolmo.load(olmo).score([d.text for d in collect_documents([corpus / "web", corpus / "mixed.jsonl"])])
    assert [d["nats"] for d in results[str(olmo)]["documents"]] == pytest.approx([r.nats for r in subword], abs=2e-4)
    printed = capsys.readouterr().out
    assert "overall" in printed and "macro" in printed
    assert main(["eval", "bpb", str(corpus / "web"), "--window", "4", "--overlap", "4"]) == 2


def test_windows_follow_each_models_context_and_match_model_score(tmp_path):
    """The bundled Bolmo (576 positions) and its teacher (128) get windows that fit them by
    default, so a document of several windows scores exactly as `model.score` scores it; without
    the cap they were scored in one 2,048-id window, past what either model was trained on."""
    import bolmo

    text = " ".join(f"The {word} module documents function number {i}." for i, word in
                    enumerate(["json", "pickle", "uuid", "zipfile", "typing"] * 6))  # ~1,500 bytes
    (tmp_path / "doc.txt").write_text(text)
    out = tmp_path / "bpb.json"
    assert main(["eval", "bpb", str(tmp_path / "doc.txt"), "--model", "default", "--model", "default-teacher",
                 "--no-progress", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for name, window, overlap in (("default", 575, 287), ("default-teacher", 127, 63)):
        got = results[name]
        assert (got["window"], got["overlap"]) == (window, overlap)
        expected = bolmo.load(name).score([text])[0]
        assert got["overall"]["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-5)
    assert len(text.encode()) > 2 * 575  # several windows for both models


def test_model_window_defaults_and_a_window_past_the_context_warns(tiny_model_dir):
    import bolmo
    from bolmo.errors import ContextWarning
    from bolmo.eval.rolling import model_window

    model = bolmo.load()
    assert model_window(model) == (575, 287)
    assert model_window(model, 100) == (100, 50) and model_window(model, 100, 10) == (100, 10)
    with pytest.warns(ContextWarning, match="longer than the model's context"):
        assert model_window(model, 1000) == (1000, 500)
    model.config.max_position_embeddings = -1  # a checkpoint that does not say: the plain defaults
    assert model_window(model) == (2048, 512)


def test_unreadable_jsonl_files_are_one_line_errors(tmp_path):
    """Invalid UTF-8 and a damaged .gz raised UnicodeDecodeError / BadGzipFile (a traceback)."""
    import gzip

    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    not_gzip = tmp_path / "fake.jsonl.gz"
    not_gzip.write_bytes(b'{"text": "not compressed"}\n')
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    for path, message in ((bad_utf8, "not valid UTF-8"), (not_gzip, "cannot read"), (cut, "cannot read")):
        with pytest.raises(BolmoError, match=rf"^{path}: {message}"):
            collect_documents([path])
