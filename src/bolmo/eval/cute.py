"""CUTE (Edman et al., EMNLP 2024): 14 character-understanding tasks, the benchmark's own protocol.

Each example fills the task's 4-shot instruction (`assets/cute/prompts.json`, the benchmark's
prompts verbatim, MIT) with its inputs, wraps it in the model's chat template when it has one,
and appends ` Answer: "`. The model decodes greedily; the prediction is the text between the
first two quotes after the last `Answer:` of prompt + output (so the closing quote ends it) or
"" when there is no quote; the score is exact match, lowercased for the word-level tasks.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bolmo.chat_template import ChatTemplate
from bolmo.errors import BolmoError, ContextWarning, PromptCutWarning, warn

CUTE_TASKS = ("spell", "spell_inverse", "contains_char", "contains_word", "orth", "sem",
              "ins_char", "ins_word", "del_char", "del_word", "sub_char", "sub_word", "swap_char", "swap_word")
WORD_TASKS = frozenset({"contains_word", "ins_word", "del_word", "sub_word", "swap_word"})
HUB_DATASET = "leukas/cute"
ANSWER_OPENING = ' Answer: "'
DEFAULT_MAX_NEW_BYTES = 200  # the benchmark allows 100 tokens; in bytes, for byte and subword models alike


@dataclass(frozen=True)
class CuteExample:
    task: str
    question: str  # the filled 4-shot instruction, before any chat template
    label: str


@cache
def prompts() -> dict[str, str]:
    return json.loads((Path(__file__).parents[1] / "assets" / "cute" / "prompts.json").read_text(encoding="utf-8"))


def parse_tasks(spec: str) -> list[str]:
    """"all" or a comma-separated list of CUTE task names."""
    names = list(CUTE_TASKS) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in CUTE_TASKS]
    if unknown or not names:
        raise BolmoError(f"--tasks: unknown CUTE task(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(CUTE_TASKS)} or all")
    return names


def read_task(data_dir: Path, task: str, limit: int | None = None) -> list[CuteExample]:
    """Examples of `task` from a local copy of the benchmark: `DIR/{task}.tsv` or
    `DIR/data/{task}.tsv` (columns input1[, input2, input3], label; tab-separated)."""
    file = next((f for f in (data_dir / f"{task}.tsv", data_dir / "data" / f"{task}.tsv") if f.is_file()), None)
    if file is None:
        raise BolmoError(f"{data_dir}: no {task}.tsv (nor data/{task}.tsv); point --data at a copy of CUTE")
    with file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][-1] != "label" or not all(c.startswith("input") for c in rows[0][:-1]):
        raise BolmoError(f"{file}: expected a header input1[, input2, input3], label")
    examples = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise BolmoError(f"{file}: line {line} has {len(row)} fields, the header has {len(rows[0])}")
        examples.append(CuteExample(task, prompts()[task].format(*row[:-1]), row[-1]))
    return examples[:limit]


def load_hub_task(task: str, limit: int | None = None) -> list[CuteExample]:
    """Examples of `task` from the Hub dataset (split = task name). Two schemas are read, since the
    published one could not be checked from here (no network): ready prompts (columns prompt,
    answer) or the benchmark's own TSV columns (input1[, input2, input3], label), which get the
    task's 4-shot instruction as the local copies do."""
    from bolmo.checkpoint.hub import hub_unreachable

    unreachable = hub_unreachable()
    if unreachable is not None:
        raise BolmoError(f"cannot reach the Hub for {HUB_DATASET} ({unreachable}); pass --data DIR with a local copy")
    try:
        from datasets import load_dataset

        split = load_dataset(HUB_DATASET, split=task)
    except Exception as exc:  # offline, missing split, or datasets not installed
        raise BolmoError(f"cannot load {HUB_DATASET} split {task} from the Hub ({exc}); pass --data DIR "
                         "with a local copy") from None
    columns = set(split.column_names)
    inputs = sorted((c for c in columns if c.startswith("input")), key=lambda c: int(c[5:] or 0))
    if not ({"prompt", "answer"} <= columns or ("label" in columns and inputs)):
        raise BolmoError(f"{HUB_DATASET} split {task}: expected columns prompt and answer, or input1[, input2, "
                         f"input3] and label; got {split.column_names}")
    rows = split if limit is None else split.select(range(min(limit, len(split))))
    if {"prompt", "answer"} <= columns:
        return [CuteExample(task, row["prompt"], row["answer"]) for row in rows]
    return [CuteExample(task, prompts()[task].format(*(row[c] for c in inputs)), row["label"]) for row in rows]


def extract_answer(text: str) -> str:
    """The prediction in prompt + output: between the first two quotes after the last `Answer:`."""
    pieces = text.split("Answer:")[-1].split('"')
    return pieces[1] if len(pieces) > 1 else ""


def is_correct(task: str, prediction: str, label: str) -> bool:
    if task in WORD_TASKS:
        return prediction.lower() == label.lower()
    return prediction == label


def model_prompt(example: CuteExample, chat_template: ChatTemplate | None) -> str:
    head = chat_template.user_turn(example.question) if chat_template else example.question
    return head + ANSWER_OPENING


@dataclass
class CuteResult:
    task: str
    correct: int
    total: int
    predictions: list[str]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def evaluate(model, examples: Sequence[CuteExample], chat_template: ChatTemplate | None = None,
             max_new_bytes: int = DEFAULT_MAX_NEW_BYTES, batch_size: int = 16,
             progress: Callable[[int], None] | None = None) -> dict[str, CuteResult]:
    """Greedy generation and exact-match scoring per task, in the order of `examples`."""
    if batch_size < 1:
        raise BolmoError(f"batch_size must be at least 1, got {batch_size}")
    results: dict[str, CuteResult] = {}
    cut: dict[str, int] = {}  # task -> prompts the generator cut to the model's context
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts_ = [model_prompt(e, chat_template) for e in chunk]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptCutWarning)
            outputs = model.generate(prompts_, max_new_bytes=max_new_bytes)
        for warning in caught:
            if isinstance(warning.message, PromptCutWarning):
                task = chunk[warning.message.index].task
                cut[task] = cut.get(task, 0) + 1
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        for example, prompt, output in zip(chunk, prompts_, outputs):
            prediction = extract_answer(prompt + output)
            result = results.setdefault(example.task, CuteResult(example.task, 0, 0, []))
            result.predictions.append(prediction)
            result.total += 1
            result.correct += is_correct(example.task, prediction, example.label)
        if progress is not None:
            progress(len(chunk))
    if cut:  # one line for the run, not one per prompt and batch (whose prompt numbers mean nothing here)
        counts = ", ".join(f"{task} {n} of {results[task].total}" for task, n in cut.items())
        warn(f"CUTE prompts longer than the model's context, with {max_new_bytes:,} bytes kept for the answer, "
             f"lost their beginning (the first few-shot examples): {counts}", ContextWarning)
    return results
