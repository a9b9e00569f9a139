# python benchmarks/train.py [--models tiny 1b-local] [--stages stage1 stage2] [--steps 3] [--threads N] [--workdir DIR]
"""Training throughput (real bytes per second) and an MFU estimate for `bolmo train`, stage 1 and
stage 2, on this machine (CPU float32, or CUDA with bfloat16 autocast when there is a GPU).

Models: `tiny` (the `tiny` preset's sizes: d 64, 2 global layers, 1 + 2 local layers) and
`1b-local` (Bolmo-1B's local sizes: d 2048, 1 encoder + 4 decoder mLSTM layers, 16 heads, local
MLP 2816, with 2 global layers of OLMo 2 1B's shape and a teacher with the dolma2 vocabulary size,
100,278, so its LM head costs what the real one does). Teachers have random weights; the data is
this repository's own sources and docs, tokenized with a 1,024-entry BPE trained on them.

Each row runs `--steps` optimizer steps after one warm-up step through the trainer itself
(`Trainer.step`: micro-batches, backward, clipping, AdamW); the time is the median step. MFU =
model FLOPs (6 per trainable parameter per position, see bolmo.train.metrics.FlopsPerStep) /
(step time x peak FLOP/s); on CPU the peak is a measured float32 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import ROOT, report
from bolmo.byteify import ByteifyOptions, byteify_init
from bolmo.model.olmo import OlmoForCausalLM
from bolmo.olmo.config import OlmoConfig
from bolmo.train.bpe import EOS_TOKEN, PAD_TOKEN, train_bpe
from bolmo.train.config import TrainConfig, from_dict
from bolmo.train.distributed import Dist
from bolmo.train.metrics import peak_flops
from bolmo.train.prepare import PrepareConfig, prepare
from bolmo.train.trainer import Trainer, init_olmo_weights

MODELS = {
    "tiny": {"teacher": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2),
             "vocab": None, "local": ByteifyOptions(decoder_layers=2, local_heads=4, local_intermediate_size=96),
             "tokens": 128, "instances": 8, "micro": 4},
    "1b-local": {"teacher": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2,
                                 num_attention_heads=16, rms_norm_eps=1e-6, rope_theta=500000.0),
                 "vocab": 100278, "local": ByteifyOptions(decoder_layers=4, local_heads=16, local_intermediate_size=2816),
                 "tokens": 64, "instances": 2, "micro": 1},
}


def make_inputs(work: Path, name: str, tokenizer: Path, data: Path) -> tuple[Path, Path]:
    """A random-weight teacher of the model's global shape and its byteify-init student."""
    spec = MODELS[name]
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    config = OlmoConfig(model_type="olmo2", vocab_size=spec["vocab"] or len(vocab), max_position_embeddings=4096,
                        eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[PAD_TOKEN], bos_token_id=None,
                        **spec["teacher"])
    teacher_dir, student_dir = work / f"{name}-teacher", work / f"{name}-student"
    torch.manual_seed(0)
    teacher = OlmoForCausalLM(config)
    init_olmo_weights(teacher, config.initializer_range)
    teacher_dir.mkdir(parents=True, exist_ok=True)
    save_file(teacher.state_dict(), str(teacher_dir / "model.safetensors"))
    (teacher_dir / "config.json").write_text(json.dumps(config.to_dict()))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        (teacher_dir / file).write_bytes((tokenizer / file).read_bytes())
    byteify_init(teacher_dir, student_dir, spec["local"], overwrite=True)
    return teacher_dir, student_dir


def bench(work: Path, name: str, stage: str, teacher: Path, student: Path, data: Path, steps: int,
          peak: float, device: torch.device) -> dict:
    spec = MODELS[name]
    seq_len = 4 * spec["tokens"]
    config = from_dict(TrainConfig, {
        "stage": stage, "run_dir": str(work / f"run-{name}-{stage}"), "model": {"path": str(student)},
        "data": {"dir": str(data), "tokens_per_instance": spec["tokens"], "seq_len": seq_len},
        "global_batch_bytes": spec["instances"] * seq_len, "micro_batch_instances": spec["micro"],
        "optim": {"lr": 1e-4}, "schedule": {"steps": steps + 1, "warmup_fraction": 0.0},
        "peak_flops": peak, "export": False}, "")
    if stage == "stage1":
        config.model.teacher = str(teacher)
    config.validate()
    trainer = Trainer(config, Dist(0, 1, device))
    batches = trainer.data.batches(trainer.per_rank)
    rows = [trainer.step(step, next(batches), peak) for step in range(1, steps + 2)][1:]
    seconds = statistics.median(r["step_time"] for r in rows)
    trainable = sum(p.numel() for p in trainer.module.model.parameters() if p.requires_grad)
    return {"model": name, "stage": stage, "trainable_M": trainable / 1e6,
            "bytes_per_step": statistics.median(r["bytes_per_s"] * r["step_time"] for r in rows),
            "s_per_step": seconds, "bytes_per_s": statistics.median(r["bytes_per_s"] for r in rows),
            "mfu_pct": 100 * statistics.median(r["mfu"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--workdir", type=Path, help="keep the generated inputs here (default: a temp dir)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a shared "
                        "machine use fewer threads than idle cores, spinning OpenMP workers collapse otherwise")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    peak, source = peak_flops(device, None)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sources = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "docs").glob("*.md"))
        tokenizer = train_bpe(sources, work / "tokenizer", vocab_size=1024)
        corpus, data = work / "corpus.jsonl", work / "data"
        corpus.write_text("".join(json.dumps({"text": p.read_text()}) + "\n" for p in sources))
        shutil.rmtree(data, ignore_errors=True)
        prepare(PrepareConfig(inputs=[corpus], tokenizer=tokenizer, out=data, progress=False))
        rows = []
        for name in args.models:
            teacher, student = make_inputs(work, name, tokenizer, data)
            rows += [bench(work, name, stage, teacher, student, data, args.steps, peak, device)
                     for stage in args.stages]
    report("train", rows, ["model", "stage", "trainable_M", "bytes_per_step", "s_per_step", "bytes_per_s",
                           "mfu_pct"],
           {"device": str(device), "steps": args.steps, "peak_flops": peak, "peak_source": source,
            "precision": "bfloat16 autocast" if device.type == "cuda" else "float32", "threads": torch.get_num_threads(),
            "models": {k: {**v, "local": vars(v["local"])} for k, v in MODELS.items() if k in args.models}})


if __name__ == "__main__":
    main()
