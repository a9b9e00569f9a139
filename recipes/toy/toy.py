# python recipes/toy/toy.py {split,tokenizer,teacher-init,evaluate,package} ...   (run.sh calls each step)
"""Helpers of the toy byteifying recipe (recipes/toy/run.sh): split the Python documentation into
training and held-out pages, train the BPE tokenizer, write the teacher's config, evaluate bits per
byte of teacher and byteified model on the held-out pages, and package the result as a model
directory with a model card."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

HELDOUT_LETTERS = "uvwxyz"  # library/ pages whose file name starts with one of these are held out


def split(args: argparse.Namespace) -> None:
    """Copy every .rst.txt page under SRC to OUT/train or OUT/heldout (library/[u-z]*)."""
    pages = sorted(args.src.rglob("*.rst.txt"))
    if not pages:
        sys.exit(f"{args.src}: no .rst.txt pages (point it at .../html/_sources)")
    counts = {"train": 0, "heldout": 0}
    for page in pages:
        rel = page.relative_to(args.src)
        part = "heldout" if rel.parts[0] == "library" and rel.name[0].lower() in HELDOUT_LETTERS else "train"
        dest = args.out / part / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, dest)
        counts[part] += 1
    print(json.dumps(counts))


def tokenizer(args: argparse.Namespace) -> None:
    from bolmo.train.bpe import train_bpe

    train_bpe(sorted(args.train.rglob("*.txt")), args.out, args.vocab_size)


def teacher_init(args: argparse.Namespace) -> None:
    """config.json of a fresh OLMo 2 model (post-norm, QK-norm, RoPE) plus its tokenizer: the
    starting point of `bolmo train` with `stage: subword` and `model.random_init: true`."""
    from bolmo.olmo.config import OlmoConfig
    from bolmo.train.bpe import EOS_TOKEN, PAD_TOKEN

    vocab = json.loads((args.tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    config = OlmoConfig(model_type="olmo2", vocab_size=len(vocab), hidden_size=args.hidden_size,
                        intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, rope_theta=500000.0, rms_norm_eps=1e-6,
                        max_position_embeddings=4096, eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[PAD_TOKEN],
                        bos_token_id=None)
    config.validate("teacher-init")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(args.tokenizer / name, args.out / name)


def chunks(text: str, max_bytes: int) -> list[str]:
    """Cut a page at line ends into pieces of at most `max_bytes` UTF-8 bytes (a longer line is cut
    at character boundaries), so both models score the same pieces with the context they trained on."""
    out, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        while len(line.encode("utf-8")) > max_bytes:
            cut = max_bytes
            while len(line[:cut].encode("utf-8")) > max_bytes:
                cut -= 1
            out.append(line[:cut])
            line = line[cut:]
        n = len(line.encode("utf-8"))
        if size + n > max_bytes and current:
            out.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        out.append("".join(current))
    return [c for c in out if c]


def bits_per_byte(model, pieces: list[str], batch_size: int) -> dict:
    """Total nats / (ln 2 x total UTF-8 bytes) over the pieces (model.score: nats per text)."""
    start = time.perf_counter()
    results = model.score(pieces, batch_size=batch_size)
    nats = sum(r.nats for r in results)
    n_bytes = sum(r.n_bytes for r in results)
    return {"bits_per_byte": nats / math.log(2) / n_bytes, "nats": nats, "bytes": n_bytes,
            "seconds": time.perf_counter() - start}


def evaluate(args: argparse.Namespace) -> None:
    import torch

    import bolmo

    torch.set_grad_enabled(False)
    pages = sorted(args.heldout.rglob("*.txt"))[: args.max_pages]
    pieces = [c for page in pages for c in chunks(page.read_text(encoding="utf-8"), args.chunk_bytes)]
    report = {"pages": len(pages), "pieces": len(pieces), "chunk_bytes": args.chunk_bytes}
    for name, path in (("teacher", args.teacher), ("bolmo", args.bolmo)):
        report[name] = {"model": str(path), **bits_per_byte(bolmo.load(path), pieces, args.batch_size)}
        print(f"{name}: {report[name]['bits_per_byte']:.4f} bits per byte", flush=True)
    report["ratio"] = report["bolmo"]["bits_per_byte"] / report["teacher"]["bits_per_byte"]
    print(f"bolmo / teacher = {report['ratio']:.4f} (goal: <= 1.10)")
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def package(args: argparse.Namespace) -> None:
    """Copy the model (weights, config, tokenizer) to OUT and write its model card (`--card`)."""
    import torch

    from bolmo.checkpoint.convert import convert

    report = json.loads(args.eval.read_text())
    staging = args.out.with_name(args.out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    convert(args.model, staging, "hf", dtype=getattr(torch, args.dtype))
    # The context the model was trained on, not the initial config's 4096: scoring windows and
    # prompt cuts follow it, and longer windows score worse than the trained length (d128 Bolmo on
    # docs prose: 3.12 bits per byte in 4,095-byte windows against 2.96 in 575-byte ones).
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = args.context
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = (Path(__file__).parent / args.card).read_text()
    facts = {"teacher_bpb": f"{report['teacher']['bits_per_byte']:.3f}",
             "bolmo_bpb": f"{report['bolmo']['bits_per_byte']:.3f}", "ratio": f"{report['ratio']:.3f}",
             "pages": report["pages"], "dtype": args.dtype, "recipe": args.recipe.read_text().strip(),
             "context": f"{args.context:,}"}
    (staging / "README.md").write_text(card.format(**facts))
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(run=split)
    p = sub.add_parser("tokenizer")
    p.add_argument("train", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.set_defaults(run=tokenizer)
    p = sub.add_parser("teacher-init")
    p.add_argument("tokenizer", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=512)
    p.set_defaults(run=teacher_init)
    p = sub.add_parser("evaluate")
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--bolmo", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chunk-bytes", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-pages", type=int)
    p.set_defaults(run=evaluate)
    p = sub.add_parser("package")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--recipe", type=Path, required=True, help="a text file describing the run (sizes, steps)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--card", default="MODEL_CARD.md", help="model card template next to this script")
    p.add_argument("--context", type=int, required=True,
                   help="max_position_embeddings to write: the sequence length the model was trained on")
    p.set_defaults(run=package)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
