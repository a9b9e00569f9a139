"""CUTE: prompts, answer extraction, scoring, chat templates, and `bolmo eval cute`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bolmo.cli import main
from bolmo.errors import BolmoError
from bolmo.eval import cute
from bolmo.chat_template import ChatTemplate, find_chat_template
from conftest import load_fixture_model

DATA = Path(__file__).parent / "fixtures" / "cute"


def test_all_fourteen_tasks_have_prompts():
    assert set(cute.prompts()) == set(cute.CUTE_TASKS) and len(cute.CUTE_TASKS) == 14
    assert cute.parse_tasks("all") == list(cute.CUTE_TASKS)
    with pytest.raises(BolmoError, match="unknown CUTE task"):
        cute.parse_tasks("spell,spelling")


def test_examples_fill_the_four_shot_prompt():
    spell = cute.read_task(DATA, "spell")
    assert [e.label for e in spell] == ["t h e", "a n d", "f o r"]
    assert spell[0].question.startswith("Spell out the word, putting spaces between each letter")
    assert spell[0].question.endswith('Question: Spell out the word "the".')
    assert '4. Spell out the word "tongue". Answer: "t o n g u e"' in spell[0].question
    sub = cute.read_task(DATA / "data", "sub_char", limit=1)  # DIR/{task}.tsv works too
    assert sub[0].question.endswith('Question: Substitute "h" with "c" in "the".') and sub[0].label == "tce"
    with pytest.raises(BolmoError, match="no orth.tsv"):
        cute.read_task(DATA, "orth")


def test_answer_extraction_follows_the_benchmark():
    prompt = 'Question: Spell out the word "the". Answer: "'
    assert cute.extract_answer(prompt + 't h e"\n\nQuestion: ...') == "t h e"
    assert cute.extract_answer(prompt + "t h e") == "t h e"  # budget ran out before the closing quote
    # a later "Answer:" in the output wins, as in the original scoring
    assert cute.extract_answer(prompt + 'x"\n5. Spell "a". Answer: "a"') == "a"
    assert cute.extract_answer("no quote at all Answer: none") == ""


def test_exact_match_lowercases_word_tasks_only():
    assert cute.is_correct("contains_word", "no", "No")
    assert cute.is_correct("del_word", "the octopus.", "The octopus.")
    assert not cute.is_correct("spell", "T h e", "t h e")
    assert not cute.is_correct("spell", "t h e ", "t h e")


def test_chat_template_is_found_and_rendered(tmp_path):
    assert find_chat_template(tmp_path) is None
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}" \
               "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    assert find_chat_template(tmp_path).source == template
    example = cute.read_task(DATA, "spell", limit=1)[0]
    prompt = cute.model_prompt(example, ChatTemplate(template))
    assert prompt == f"<|user|>{example.question}\n<|assistant|>" + ' Answer: "'
    assert cute.model_prompt(example, None) == example.question + ' Answer: "'
    with pytest.raises(BolmoError, match="chat template"):
        ChatTemplate("{% if %}")


def test_prompts_cut_to_the_context_give_one_warning_naming_tasks(tiny_model_dir):
    """Before: one ContextWarning per prompt and batch, numbered within its batch ("prompt 0",
    "prompt 1", "prompt 0", ...), which named no example and flooded a full run."""
    import warnings

    from bolmo.errors import ContextWarning

    model = load_fixture_model(tiny_model_dir)  # 512 positions: 4-shot prompts + 200 bytes do not fit
    examples = cute.read_task(DATA, "spell") + cute.read_task(DATA, "contains_word", limit=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cute.evaluate(model, examples, max_new_bytes=200, batch_size=2)
    context = [str(w.message) for w in caught if issubclass(w.category, ContextWarning)]
    assert len(context) == 1, context
    assert "spell 3 of 3, contains_word 1 of 1" in context[0] and "200 bytes kept for the answer" in context[0]


def test_evaluate_scores_the_models_own_generations(tiny_model_dir):
    model = load_fixture_model(tiny_model_dir)
    examples = cute.read_task(DATA, "spell", limit=2) + cute.read_task(DATA, "contains_word", limit=2)
    results = cute.evaluate(model, examples, max_new_bytes=6, batch_size=3)
    for task in ("spell", "contains_word"):
        task_examples = [e for e in examples if e.task == task]
        prompts = [e.question + ' Answer: "' for e in task_examples]
        outputs = model.generate(prompts, max_new_bytes=6)
        expected = [cute.extract_answer(p + o) for p, o in zip(prompts, outputs)]
        assert results[task].predictions == expected
        assert results[task].correct == sum(cute.is_correct(task, p, e.label) for p, e in zip(expected, task_examples))
        assert results[task].total == 2


def test_cli_side_by_side_with_chart(tiny_model_dir, tmp_path):
    out, chart = tmp_path / "cute.json", tmp_path / "cute.png"
    code = main(["eval", "cute", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--data", str(DATA),
                 "--tasks", "spell,sub_char", "--limit", "1", "--max-new-bytes", "4", "--no-progress",
                 "--output", str(out), "--chart", str(chart)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["tasks"] == ["spell", "sub_char"] and data["labels"] == {"spell": ["t h e"], "sub_char": ["tce"]}
    (label,) = data["accuracy"]  # the same model twice is one column
    assert set(data["accuracy"][label]) == {"spell", "sub_char", "average"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_chart_that_cannot_be_written_is_one_line_after_the_results(tiny_model_dir, tmp_path, monkeypatch,
                                                                       capsys):
    """The chart is drawn after the evaluation: a file system that refuses it (/proc as root, a
    full disk) is named in one line, and the results file is already written."""
    import errno

    from matplotlib.figure import Figure

    def refuse(self, path, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Figure, "savefig", refuse)
    out, chart = tmp_path / "cute.json", tmp_path / "cute.png"
    code = main(["eval", "cute", "--model", str(tiny_model_dir), "--data", str(DATA), "--tasks", "spell",
                 "--limit", "1", "--max-new-bytes", "4", "--no-progress", "--output", str(out),
                 "--chart", str(chart)])
    assert code == 2
    assert f"{chart}: cannot write the chart (Permission denied)" in capsys.readouterr().err
    assert json.loads(out.read_text())["tasks"] == ["spell"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cute.json"]


@pytest.mark.parametrize("schema", ["prompts", "tsv-columns", "other"])
def test_hub_task_reads_either_schema(schema, monkeypatch):
    import datasets

    local = cute.read_task(DATA, "spell", limit=2)
    tables = {"prompts": {"prompt": [e.question for e in local], "answer": [e.label for e in local]},
              "tsv-columns": {"input1": ["the", "and"], "label": ["t h e", "a n d"]},
              "other": {"text": ["the"]}}

    def fake_load_dataset(name, split):
        assert (name, split) == (cute.HUB_DATASET, "spell")
        return datasets.Dataset.from_dict(tables[schema])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("bolmo.checkpoint.hub.hub_unreachable", lambda: None)  # as if online
    if schema == "other":
        with pytest.raises(BolmoError, match="expected columns prompt and answer, or input1"):
            cute.load_hub_task("spell")
        return
    examples = cute.load_hub_task("spell", limit=2)
    assert [(e.question, e.label) for e in examples] == [(e.question, e.label) for e in local]


def test_without_data_an_unreachable_hub_fails_fast_with_the_way_out(monkeypatch, capsys):
    """No --data and no network: one request, not the Hub libraries' ~25 s of retries."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    assert main(["eval", "cute", "--tasks", "spell", "--limit", "1", "--no-progress"]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err
    assert "cannot reach the Hub" in err and "127.0.0.1:9" in err and "--data DIR" in err


def test_cute_finds_the_template_serve_finds(tmp_path):
    """One chat-template finder for eval and serve: CUTE also looks in the subword tokenizer's
    directory and gives templates bos/eos tokens and raise_exception (its own copy did neither)."""
    tokenizer_dir = tmp_path / "subword_tokenizer"
    tokenizer_dir.mkdir()
    template = ("{{ bos_token }}{% for m in messages %}{% if m.role != 'user' %}{{ raise_exception('user only') }}"
                "{% endif %}[{{ m.content }}]{% endfor %}")
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}))
    found = find_chat_template(tmp_path)
    assert found.user_turn("hi") == "<s>[hi]"
    with pytest.raises(BolmoError, match="rejected the messages: user only"):
        found.render([{"role": "system", "content": "x"}])
