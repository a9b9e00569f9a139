"""`bolmo download`: fetch a released Bolmo checkpoint (HF and/or native OLMo-core layout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bolmo.checkpoint.hub import FORMATS, NATIVE_DIR
from bolmo.cli.paths import output_dir
from bolmo.errors import BolmoError, CheckpointError

_FORMAT_HELP = (
    "hf: the HF model at the repo root (default); olmo-core: the native checkpoint from olmo_core/, "
    "laid out as DIR/config.json + DIR/model_and_optim/; all: both, native under DIR/olmo_core/"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download a Bolmo checkpoint from the Hugging Face Hub",
        description="Download allenai/Bolmo-1B, allenai/Bolmo-7B or any Hub repo in the same layout. "
        "Interrupted downloads resume when the command is run again. HF_TOKEN, HF_ENDPOINT and "
        "HF_HUB_OFFLINE are honoured.",
    )
    parser.add_argument("model", nargs="?", metavar="{1b,7b,REPO_ID}", help="1b, 7b, or a Hub repo id")
    parser.add_argument("--model", "-m", dest="model_option", metavar="{1b,7b,REPO_ID}",
                        help="the same, as an option (spelling of the original download script)")
    parser.add_argument("--output-dir", "-o", required=True, type=output_dir, help="directory to download into")
    parser.add_argument("--revision", "-r", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="hf", help=_FORMAT_HELP)
    parser.add_argument("--verify", action="store_true", help="check the checkpoint structure after downloading")
    parser.add_argument("--token", default=None,
                        help="Hub token (default: HF_TOKEN or the `huggingface-cli login` token)")
    parser.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    from bolmo.checkpoint.hub import fetch, missing_layout, plan_download, verify
    from bolmo.checkpoint.inventory import human_bytes

    if (args.model is None) == (args.model_option is None):
        raise BolmoError("name the model once: `bolmo download 1b -o DIR` or `bolmo download --model 1b -o DIR`")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CheckpointError(f"{args.output_dir}: not a directory; name a directory to download into")
    plan = plan_download(args.model or args.model_option, args.revision, args.fmt, args.token)
    if plan.commit is None:
        if missing := missing_layout(plan, Path(args.output_dir)):
            raise CheckpointError(f"offline mode (HF_HUB_OFFLINE=1) and {args.output_dir} holds no earlier download "
                                  f"of {plan.repo_id} ({missing[0]} is missing); unset HF_HUB_OFFLINE to download it")
        print(f"offline mode: using the files of an earlier download of {plan.repo_id} in {args.output_dir}")
    else:
        selected = plan.selected
        print(f"{plan.repo_id} @ {plan.revision} (commit {plan.commit[:12]}), format {plan.fmt}: "
              f"{len(selected)} files, {human_bytes(sum(selected.values()))}")
    result = fetch(plan, args.output_dir, args.token)

    print(f"Done: {plan.repo_id} ({plan.fmt}) in {result.path}: {result.files} files, "
          f"{human_bytes(result.total_bytes)}")
    native = {"olmo-core": result.path, "all": result.path / NATIVE_DIR}.get(plan.fmt)
    if native is not None:
        from bolmo.checkpoint.layout import DCP_SUBDIR

        weights = native / DCP_SUBDIR
        print(f"  native checkpoint: {weights} (export BOLMO_CKPT_PATH={weights})")
    if plan.fmt != "olmo-core":
        print(f"  HF model: {result.path}")
    if result.tokenizer is not None:
        print(f"  subword tokenizer: {result.tokenizer}")
    if args.verify:
        problems = verify(result.path, plan.fmt)
        for problem in problems:
            print(f"  problem: {problem}")
        if problems:
            advice = (f"every file has the size the Hub lists, so the repo itself is inconsistent at {plan.revision}"
                      if plan.commit else "run the command again without HF_HUB_OFFLINE to complete the download")
            raise CheckpointError(f"verification found {len(problems)} problem(s) in {result.path} "
                                  f"(listed above); {advice}")
        print("  verify: ok")
    return 0
