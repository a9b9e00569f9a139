"""`bolmo info` and `bolmo score` through the CLI entry point."""

from __future__ import annotations

import json
import math

from conftest import load_fixture_model, read_cases
from bolmo.cli import main


def test_info_reports_components_and_total(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    params = report["parameters"]
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    assert params["total"] == sum(p.numel() for p in load_fixture_model(tiny_model_dir).parameters()) == 402_200
    assert params["lm_head"] == 520 * report["config"]["hidden_size"]
    assert report["config"]["num_hidden_layers"] == 4


def test_score_files_matches_library(tiny_model_dir, tmp_path, capsys):
    meta, _ = read_cases(tiny_model_dir)
    texts = [c["text"] for c in meta["forward"] if "error" not in c][:2]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"t{i}.txt")
        files[-1].write_text(text, encoding="utf-8")
    assert main(["score", *map(str, files), "--model", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = {c["text"]: c for c in meta["forward"] if "error" not in c}
    for row, text in zip(report["files"], texts):
        assert math.isclose(row["bits_per_byte"], expected[text]["bits_per_byte"], abs_tol=1e-5)
    total_nats = sum(expected[t]["total_nats"] for t in texts)
    total_bytes = sum(expected[t]["n_bytes"] for t in texts)
    assert math.isclose(report["bits_per_byte"], total_nats / math.log(2) / total_bytes, abs_tol=1e-5)


def test_score_rejects_invalid_utf8(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    assert main(["score", str(bad), "--model", str(tiny_model_dir)]) == 2
    assert "bad.txt" in capsys.readouterr().err
