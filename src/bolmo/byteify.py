"""`bolmo byteify-init`: build the stage-1 starting point of a Bolmo model from a subword OLMo 2 /
Olmo 3 teacher (docs/training-reference.md §2).

Where every weight comes from:
- global blocks `model.layers.*`: the teacher's, copied exactly (same names and shapes);
- `model.norm`: 1, as the reference code does (docs/training-reference.md §2.2; an older
  summary said "starts from the teacher's"); only a later merge changes it. `final_norm="teacher"`
  copies the teacher's final norm instead;
- subword (expanded) embedding: the first `subword_vocab_size` rows of the teacher's input
  embeddings, so at step 0 a byte position sees the subword that ends there;
- byte embedding: i.i.d. N(mu_j, sigma_j^2) per dimension j, with mu and sigma (unbiased) taken
  over all rows of the teacher's input embeddings;
- `out_projection`: default Linear init, then rescaled so that pooled patch vectors have the
  teacher embeddings' per-dimension scale (measured on 8192 random bytes; "column" is the
  reference's version, "row" the exact one: see `rescale_out_projection`);
- boundary predictor: W_q = W_k = I (p = (1 - cos(h_t, h_t+1)) / 2 from the start);
- every mLSTM input-gate bias: -10 (`xlstm_igate_bias_init`), so the mLSTMs start nearly silent;
- LM head (520 rows): truncated normal, std 0.02, cut at +-0.06; everything else: PyTorch's
  default init, and norms at 1.

The teacher's LM head is not used. All output tensors are float32 (copies of bfloat16 or float32
teacher tensors stay exact). The local width must equal the teacher's width: pooled patches
enter the global blocks and global outputs return to the decoder through d x d projections.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bolmo.checkpoint.atomic import check_destination
from bolmo.checkpoint.config_maps import RELEASED_BOLMO_CONTEXT
from bolmo.checkpoint.convert import ConversionPlan, PlannedTensor, Progress, execute, plan_conversion
from bolmo.checkpoint.inventory import listed
from bolmo.checkpoint.sources import Source
from bolmo.config import BolmoConfig, ByteifyOptions, ByteTokenizerConfig
from bolmo.errors import CheckpointError, ConfigError, TokenizerError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.model.local import LocalDecoder, LocalEncoder
from bolmo.olmo.config import OlmoConfig
from bolmo.olmo.tokenizer import SubwordTokenizer
from bolmo.tokenizer import SUBWORD_TOKENIZER_DIR, SUBWORD_TOKENIZER_FILES, resolve_subword_tokenizer

IGATE_BIAS_INIT = -10.0
LM_HEAD_STD = 0.02
RESCALE_SAMPLES = 8192  # random bytes used to measure the out_projection's output scale
TEACHER_EMBEDDING = "model.embed_tokens.weight"
TEACHER_FINAL_NORM = "model.norm.weight"
_FRESH = "fresh:"  # source names of newly initialized tensors in the output plan


@dataclass
class ByteifyResult:
    destination: Path
    config: BolmoConfig
    copied: list[str]  # output tensors taken from the teacher unchanged
    initialized: list[str]  # output tensors initialized here (the subword embedding included)
    seconds: float


def bolmo_config_for_teacher(teacher: OlmoConfig, subword_vocab_size: int, options: ByteifyOptions) -> BolmoConfig:
    """The Bolmo config whose global transformer is exactly the teacher's."""
    d = teacher.hidden_size
    if options.local_d_model is not None and options.local_d_model != d:
        raise ConfigError(
            f"--local-d-model {options.local_d_model} differs from the teacher's hidden_size {d}: in this "
            "architecture the local width equals the global width (out_projection and in_projection are d x d)"
        )
    if options.local_heads is not None and d % (2 * options.local_heads):
        raise ConfigError(f"--local-heads {options.local_heads}: the teacher's hidden_size {d} must be divisible by "
                          "2 * local heads (the mLSTM's query/key width per head is d / (2 heads))")
    if options.final_norm not in ("teacher", "ones"):
        raise ConfigError(f"final_norm must be 'teacher' or 'ones', got {options.final_norm!r}")
    if options.out_projection_scaling not in ("column", "row"):
        raise ConfigError(f"out_projection_scaling must be 'column' or 'row', got {options.out_projection_scaling!r}")
    spec = teacher.transformer_spec()
    extra = {"sliding_window": teacher.sliding_window} if teacher.sliding_window is not None else {}
    return BolmoConfig(
        hidden_size=d,
        intermediate_size=teacher.intermediate_size,
        num_hidden_layers=teacher.num_hidden_layers,
        num_attention_heads=teacher.num_attention_heads,
        num_key_value_heads=teacher.num_key_value_heads,
        head_dim=teacher.head_dim,
        # A teacher exported by OLMo-core may not know its context (-1): Bolmo's released one then.
        max_position_embeddings=teacher.context_positions or RELEASED_BOLMO_CONTEXT,
        initializer_range=teacher.initializer_range,
        rope_theta=teacher.rope_theta,
        rope_scaling=teacher.rope_scaling,
        rms_norm_eps=teacher.rms_norm_eps,
        layer_types=list(spec.layer_types),
        num_local_encoder_layers=options.encoder_layers,
        num_local_decoder_layers=options.decoder_layers,
        num_local_heads=options.local_heads or next(h for h in (16, 8, 4, 2, 1) if d % (2 * h) == 0),
        # 4d/3 rounded up to a multiple of 128: the released 2816 (d 2048) and 5504 (d 4096).
        local_intermediate_size=options.local_intermediate_size or 128 * math.ceil(4 * d / 384),
        subword_vocab_size=subword_vocab_size,
        tokenizer_config=ByteTokenizerConfig(original_identifier=SUBWORD_TOKENIZER_DIR),
        **extra,
    )


@torch.no_grad()
def rescale_out_projection(encoder: LocalEncoder, mu: torch.Tensor, sigma: torch.Tensor, mode: str,
                           samples: int = RESCALE_SAMPLES) -> None:
    """Match the pooled patch vectors' per-dimension mean/std to the teacher embeddings' (mu, sigma).

    Runs the encoder on `samples` random byte ids (the same ids serve as subword ids, modulo the
    subword vocabulary), every position its own patch, and measures mean m and std s of the
    projected outputs; r = sigma / s. "column" is what the reference does (W scaled per *input*
    column by an output-side ratio, b = mu - m r; the released models come from it); "row" scales
    each output row, which makes the outputs' statistics exactly (mu, sigma) on those samples.
    """
    ids = torch.randint(0, encoder.byte_embedding.num_embeddings, (1, samples))
    h, _ = encoder(ids, ids % encoder.subword_embedding.num_embeddings)
    proj = encoder.out_projection
    y = proj(h)[0]
    m, s = y.mean(0), y.std(0)
    r = sigma / s
    if mode == "column":
        proj.weight.mul_(r[None, :])
        proj.bias.copy_(mu - m * r)
    else:
        proj.bias.copy_(mu - r * (m - proj.bias))
        proj.weight.mul_(r[:, None])


@torch.no_grad()
def init_local_weights(config: BolmoConfig, teacher_embeddings: torch.Tensor, options: ByteifyOptions
                       ) -> dict[str, torch.Tensor]:
    """Every Bolmo tensor that does not come from the teacher's blocks (HF names, float32),
    reproducible from `options.seed`."""
    emb = teacher_embeddings.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        encoder, decoder = LocalEncoder(config), LocalDecoder(config)
        lm_head = nn.init.trunc_normal_(torch.empty(config.vocab_size, config.hidden_size), std=LM_HEAD_STD,
                                        a=-3 * LM_HEAD_STD, b=3 * LM_HEAD_STD)
        encoder.subword_embedding.weight.copy_(emb[: config.subword_vocab_size])
        mu, sigma = emb.mean(0), emb.std(0)
        encoder.byte_embedding.weight.copy_(torch.randn(config.vocab_size, config.hidden_size) * sigma + mu)
        rescale_out_projection(encoder, mu, sigma, options.out_projection_scaling)
    predictor = encoder.boundary_predictor_module
    predictor.q_proj_layer.weight.copy_(torch.eye(config.hidden_size))
    predictor.k_proj_layer.weight.copy_(torch.eye(config.hidden_size))
    for layer in (*encoder.layers, *decoder.layers):
        layer.xlstm.igate_preact.bias.fill_(IGATE_BIAS_INIT)
    state = {f"model.local_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"model.local_decoder.{k}": v for k, v in decoder.state_dict().items()}
    state["lm_head.weight"] = lm_head
    if options.final_norm == "ones":
        state[TEACHER_FINAL_NORM] = torch.ones(config.hidden_size)
    return state


class _TeacherPlusFresh:
    """Reads teacher tensors through the teacher's reader and fresh ones from memory, so the
    writer of `bolmo convert` can write the whole model tensor by tensor."""

    def __init__(self, teacher_reader, fresh: dict[str, torch.Tensor]) -> None:
        self.teacher_reader = teacher_reader
        self.fresh = fresh

    def read_tensor(self, name: str) -> torch.Tensor:
        return self.fresh[name[len(_FRESH):]] if name.startswith(_FRESH) else self.teacher_reader.read_tensor(name)


def byteify_init(teacher: str | Path, out: str | Path, options: ByteifyOptions | None = None,
                 overwrite: bool = False, progress: Progress | None = None) -> ByteifyResult:
    """Write a new Bolmo HF checkpoint to `out` (atomically), built from `teacher` (an HF or
    OLMo-core OLMo 2 / Olmo 3 directory) as the module docstring describes."""
    start = time.perf_counter()
    options = options or ByteifyOptions()
    out = Path(out)
    check_destination(out, overwrite, sources=[teacher])
    plan = plan_conversion(teacher, "hf")
    if plan.source.family != "olmo":
        raise CheckpointError(f"{teacher}: a {plan.source.kind.value} checkpoint; the teacher must be an "
                              "OLMo 2 / Olmo 3 model (HF or OLMo-core directory)")
    teacher_config = OlmoConfig.from_dict(plan.config, str(plan.source.config_path))
    tokenizer_dir = _teacher_tokenizer(plan.source, options.subword_tokenizer)
    tokenizer = SubwordTokenizer(tokenizer_dir)
    config = bolmo_config_for_teacher(teacher_config, len(tokenizer), options)
    planned = _plan_outputs(plan, config, options)

    teacher_tensors = {t.name: t for t in plan.tensors}
    fresh = init_local_weights(config, plan.produce(teacher_tensors[TEACHER_EMBEDDING]), options)
    source = Source(plan.source.path, plan.source.kind, _TeacherPlusFresh(plan.source.reader, fresh),
                    plan.source.config, plan.source.config_path)
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / SUBWORD_TOKENIZER_DIR
        staged.mkdir()
        for name in SUBWORD_TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, staged / name)
        output = ConversionPlan(source, "hf", planned, config.to_dict(), staged)
        result = execute(output, out, overwrite=overwrite, progress=progress)
    copied = [t.name for t in planned if not t.source.startswith(_FRESH)]
    initialized = [t.name for t in planned if t.source.startswith(_FRESH)]
    return ByteifyResult(result.destination, config, copied, initialized, time.perf_counter() - start)


def _teacher_tokenizer(source: Source, identifier: str | None) -> Path:
    if identifier is not None:
        return resolve_subword_tokenizer(identifier, None)
    if (source.root / "tokenizer.json").is_file():
        return source.root
    raise TokenizerError(f"{source.root}: the teacher directory has no tokenizer.json; name the teacher's "
                         "tokenizer directory with --subword-tokenizer")


def _plan_outputs(plan: ConversionPlan, config: BolmoConfig, options: ByteifyOptions) -> list[PlannedTensor]:
    """Output tensors in name order: teacher blocks (and final norm) read from the teacher, the
    rest marked fresh. Fails before anything is computed if the teacher does not fit."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in BolmoForCausalLM(config).state_dict().items()}
    teacher = {t.name: t for t in plan.tensors}
    from_teacher = {n for n in expected if n.startswith("model.layers.")}
    if options.final_norm == "teacher":
        from_teacher.add(TEACHER_FINAL_NORM)
    problems = [f"missing {n}" for n in sorted(from_teacher | {TEACHER_EMBEDDING}) if n not in teacher]
    problems += [f"{n}: teacher has {list(teacher[n].shape)}, the Bolmo model needs {list(expected[n])}"
                 for n in sorted(from_teacher) if n in teacher and teacher[n].shape != expected[n]]
    usable = from_teacher | {TEACHER_EMBEDDING, TEACHER_FINAL_NORM, "lm_head.weight"}
    problems += [f"unexpected {n} (no place for it in the Bolmo model)" for n in sorted(set(teacher) - usable)]
    if TEACHER_EMBEDDING in teacher:
        rows, width = teacher[TEACHER_EMBEDDING].shape
        if rows < config.subword_vocab_size or width != config.hidden_size:
            problems.append(f"{TEACHER_EMBEDDING} is [{rows}, {width}]; the subword tokenizer needs "
                            f"[>= {config.subword_vocab_size}, {config.hidden_size}]")
    if problems:
        raise CheckpointError(f"{plan.source.path}: the teacher does not fit a Bolmo model:" + listed(problems))
    out = []
    for name in sorted(expected):
        if name in from_teacher:
            t = teacher[name]
            out.append(PlannedTensor(name, t.source, expected[name], torch.float32, t.transform))
        else:
            out.append(PlannedTensor(name, _FRESH + name, expected[name], torch.float32))
    return out
