"""`bolmo byteify-init` and `bolmo merge`: making Bolmo models from subword OLMo 2 / Olmo 3 models
(bolmo.byteify and bolmo.merge do the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bolmo.cli.paths import output_dir
from bolmo.config import ByteifyOptions
from bolmo.console import byte_progress

DEFAULTS = ByteifyOptions()  # the options' defaults are the flags' defaults

_BYTEIFY_DESCRIPTION = """\
Build the starting point of Bolmo training from a subword OLMo 2 / Olmo 3 teacher (HF or OLMo-core
directory): the teacher's global blocks (copied exactly), a final norm of 1, a subword embedding
table seeded from its input embeddings, and freshly initialized local encoder/decoder, boundary
predictor, byte embedding and 520-way LM head. Writes an HF Bolmo directory (config.json,
safetensors, the teacher's tokenizer in subword_tokenizer/) atomically."""

_MERGE_DESCRIPTION = """\
Task arithmetic: add alpha * (POST - BASE) of two subword checkpoints to a Bolmo model byteified
from BASE. Merged: every global block tensor and the final norm; the LM head is skipped (different
shape); the local models are copied. Inputs are read and the output written tensor by tensor;
any mismatch is reported before anything is written."""


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser("byteify-init", help="build a new Bolmo model from a subword OLMo teacher",
                                 description=_BYTEIFY_DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("--teacher", required=True, type=Path,
                      help="OLMo 2 / Olmo 3 checkpoint (HF or OLMo-core), or default-teacher")
    init.add_argument("--out", required=True, type=output_dir, help="directory to create")
    init.add_argument("--local-d-model", type=int,
                      help="local width; must equal the teacher's hidden_size (the default)")
    init.add_argument("--subword-tokenizer", metavar="TOK",
                      help="the teacher's tokenizer directory (default: the teacher directory)")
    init.add_argument("--encoder-layers", type=int, default=DEFAULTS.encoder_layers,
                      help=f"local encoder mLSTM layers (default: {DEFAULTS.encoder_layers})")
    init.add_argument("--decoder-layers", type=int, default=DEFAULTS.decoder_layers,
                      help=f"local decoder mLSTM layers (default: {DEFAULTS.decoder_layers})")
    init.add_argument("--local-heads", type=int, help="mLSTM heads (default: 16, or fewer if d / 2 needs it)")
    init.add_argument("--local-intermediate-size", type=int,
                      help="local MLP width (default: 4 d / 3 rounded up to a multiple of 128: 2816 for "
                           "d 2048, 5504 for d 4096, as released)")
    init.add_argument("--final-norm", choices=["teacher", "ones"], default=DEFAULTS.final_norm,
                      help="model.norm at 1 (ones, the reference recipe) or the teacher's final norm "
                           f"(default: {DEFAULTS.final_norm})")
    init.add_argument("--out-projection-scaling", choices=["column", "row"], default=DEFAULTS.out_projection_scaling,
                      help="out_projection rescaling: the reference's column version or the exact row one "
                           f"(default: {DEFAULTS.out_projection_scaling})")
    init.add_argument("--seed", type=int, default=DEFAULTS.seed,
                      help=f"seed of the fresh initialization (default: {DEFAULTS.seed})")
    init.add_argument("--overwrite", action="count", default=0,
                      help="replace --out if it exists and looks like a checkpoint (twice: whatever it holds)")
    init.set_defaults(handler=run_byteify_init)

    merge = subparsers.add_parser("merge", help="task-arithmetic merge of a post-training delta into Bolmo",
                                  description=_MERGE_DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("--bolmo", required=True, type=Path, help="Bolmo checkpoint (HF or OLMo-core), or default")
    merge.add_argument("--base", required=True, type=Path, help="the subword model the Bolmo was made from")
    merge.add_argument("--post", required=True, type=Path, help="a post-trained descendant of --base")
    merge.add_argument("--alpha", type=float, default=1.0, help="scale of the delta (default: 1.0)")
    merge.add_argument("--out", required=True, type=output_dir, help="directory to create")
    merge.add_argument("--instructify-embeddings", action="store_true",
                       help="also add the input-embedding delta to the subword embedding table")
    merge.add_argument("--overwrite", action="count", default=0,
                       help="replace --out if it exists and looks like a checkpoint (twice: whatever it holds)")
    merge.set_defaults(handler=run_merge)


def run_byteify_init(args: argparse.Namespace) -> int:
    from bolmo.byteify import byteify_init
    from bolmo.checkpoint.sources import bundled_or_path

    args.teacher = bundled_or_path(args.teacher)  # `default-teacher`: the bundled OLMo 2 teacher

    options = ByteifyOptions(
        local_d_model=args.local_d_model, encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
        local_heads=args.local_heads, local_intermediate_size=args.local_intermediate_size,
        subword_tokenizer=args.subword_tokenizer, seed=args.seed, final_norm=args.final_norm,
        out_projection_scaling=args.out_projection_scaling,
    )
    with byte_progress("byteify-init") as progress:
        result = byteify_init(args.teacher, args.out, options, overwrite=args.overwrite, progress=progress)
    c = result.config
    print(f"Built {result.destination} from teacher {args.teacher} in {result.seconds:.1f} s")
    print(f"  global:   {c.num_hidden_layers} layers, d {c.hidden_size}, {len(result.copied)} tensors copied "
          f"from the teacher")
    print(f"  local:    {c.num_local_encoder_layers} encoder + {c.num_local_decoder_layers} decoder mLSTM layers, "
          f"{c.num_local_heads} heads, MLP {c.local_intermediate_size}; {len(result.initialized)} tensors initialized")
    print(f"  subword:  {c.subword_vocab_size} rows from the teacher's input embeddings; tokenizer in "
          f"{c.tokenizer_config.original_identifier}/")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from bolmo.checkpoint.sources import bundled_or_path
    from bolmo.merge import merge

    args.bolmo, args.base, args.post = (bundled_or_path(p) for p in (args.bolmo, args.base, args.post))

    with byte_progress("merge") as progress:
        result = merge(args.bolmo, args.base, args.post, args.out, alpha=args.alpha,
                       instructify_embeddings=args.instructify_embeddings, overwrite=args.overwrite,
                       progress=progress)
    print(f"Merged {args.bolmo} + {result.alpha} * ({args.post} - {args.base}) -> {result.destination} "
          f"in {result.seconds:.1f} s")
    print(f"  merged:   {len(result.merged)} tensors")
    print(f"  copied:   {len(result.copied)} tensors (unchanged)")
    for note in result.notes:
        print(f"  note:     {note}")
    return 0
