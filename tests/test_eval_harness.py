"""The lm-eval model `bolmo`: registration, the three request types, and `bolmo eval harness`
running lm-eval's evaluator on a local task."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

import bolmo.eval  # noqa: E402,F401  (registers the model)
from bolmo.cli import main  # noqa: E402
from bolmo.errors import BolmoError  # noqa: E402
from bolmo.eval.engine import Scorer  # noqa: E402
from bolmo.eval.harness import BolmoLM  # noqa: E402
from bolmo.eval.rolling import score_documents  # noqa: E402
from conftest import load_fixture_model  # noqa: E402
from eval_helpers import hand_loglikelihood  # noqa: E402


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return BolmoLM(model=load_fixture_model(tiny_model_dir), batch_size=2)


def test_importing_bolmo_eval_registers_the_model():
    assert get_model("bolmo") is BolmoLM


def test_loglikelihood_is_the_hf_bolmo_protocol(lm):
    pairs = [("Question: 1 + 1 =", " 2"), ("Answer: ", "yes"), ("", "x")]
    got = lm.loglikelihood([request("loglikelihood", *p) for p in pairs])
    # "Answer: " + "yes" is scored as "Answer:" + " yes" (lm-eval's whitespace rule)
    expected = [hand_loglikelihood(lm.model, "Question: 1 + 1 =", " 2"), hand_loglikelihood(lm.model, "Answer:", " yes"),
                hand_loglikelihood(lm.model, "", "x")]
    for (logprob, greedy), (want, want_greedy) in zip(got, expected):
        assert logprob == pytest.approx(want, abs=2e-4) and greedy == want_greedy


def test_rolling_and_generation(lm):
    texts = ["The quick brown fox.", "Größe"]
    rolling = lm.loglikelihood_rolling([request("loglikelihood_rolling", t) for t in texts])
    assert rolling == pytest.approx([d.logprob for d in score_documents(Scorer(lm.model), texts)], abs=1e-5)
    prompts = ["Once upon", "The"]
    outs = lm.generate_until([request("generate_until", p, {"until": ["\n"], "max_gen_toks": 7}) for p in prompts])
    assert outs == lm.model.generate(prompts, max_new_bytes=7, stop=["\n"])
    sampled = lm.generate_until([request("generate_until", "The", {"do_sample": True, "temperature": 0.7,
                                                                   "max_gen_toks": 5, "until": []})])
    assert sampled == lm.model.generate(["The"], max_new_bytes=5, temperature=0.7, seed=0)


def test_bad_model_arguments(tiny_model_dir):
    with pytest.raises(BolmoError, match="dtype"):
        BolmoLM(dtype="int8")
    with pytest.raises(BolmoError, match="batch_size"):
        BolmoLM(model=object(), batch_size="many")
    # Before: unknown keys were dropped without a word (a typo ran without the setting it meant)
    with pytest.raises(BolmoError, match="model argument max_lenght: unknown; the bolmo model takes pretrained"):
        BolmoLM(model=object(), max_lenght="10")
    BolmoLM(model=load_fixture_model(tiny_model_dir), max_batch_size=None)  # lm-eval's own addition is taken


def test_cli_refuses_unknown_or_conflicting_model_arguments(capsys):
    """Checked before lm-eval indexes its tasks or a model is loaded."""
    assert main(["eval", "harness", "--tasks", "x", "--model-args", "pretrained=default,max_lenght=10"]) == 2
    assert "max_lenght: unknown" in capsys.readouterr().err
    assert main(["eval", "harness", "--tasks", "x", "--model", "default",
                 "--model-args", "pretrained=default-teacher"]) == 2
    assert "pretrained=default-teacher and --model both name the model" in capsys.readouterr().err


@pytest.mark.slow  # lm-eval indexes its thousands of task files first
def test_cli_runs_lm_evals_evaluator_on_a_local_task(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "docs.jsonl"
    docs = [{"question": "The capital of France is", "choices": ["Paris", "Rome"], "label": 0},
            {"question": "Two plus two is", "choices": ["four", "five", "six"], "label": 0},
            {"question": "Water is", "choices": ["wet", "dry"], "label": 1}]
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bolmo_toy.yaml").write_text(
        "task: bolmo_toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n")
    out = tmp_path / "harness.json"
    code = main(["eval", "harness", "--tasks", "bolmo_toy_mc", "--include-path", str(tmp_path / "tasks"),
                 "--model-args", f"pretrained={tiny_model_dir}", "--batch-size", "2", "--output", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "bolmo_toy_mc acc" in table and "sample_len" not in table  # lm-eval's document count is no metric
    acc = json.loads(out.read_text())["results"][str(tiny_model_dir)]["bolmo_toy_mc"]["acc,none"]
    model = load_fixture_model(tiny_model_dir)
    correct = 0
    for doc in docs:
        scores = [hand_loglikelihood(model, doc["question"], " " + c)[0] for c in doc["choices"]]
        correct += scores.index(max(scores)) == doc["label"]
    assert acc == pytest.approx(correct / len(docs))
