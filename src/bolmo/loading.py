"""`bolmo.load`: find a checkpoint, build the model on the meta device, and materialize it from
the file tensor by tensor, so peak memory stays near one copy of the weights."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from bolmo.checkpoint.convert import plan_conversion
from bolmo.checkpoint.expected import build_on_meta, meta_model
from bolmo.checkpoint.inventory import DTYPES, check_finite, dtype_name
from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.checkpoint.model_config import read_model_config
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.checkpoint.sources import BUNDLED_MODELS, DEFAULT_MODEL_DIR, bundled_or_path  # noqa: F401 (re-exported)
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError, ConfigError, DeviceError, TokenizerError
from bolmo.inference import Bolmo, Olmo
from bolmo.nn.freed_memory import keep_freed_memory
from bolmo.olmo.config import OlmoConfig
from bolmo.olmo.tokenizer import SubwordTokenizer
from bolmo.tokenizer import ByteTokenizer, SubwordExpander, resolve_subword_tokenizer

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# The dtypes a model computes in (`bolmo.load(dtype=...)`; the CLI's `--dtype` offers the first three).
LOAD_DTYPES = ("float32", "bfloat16", "float16", "float64")


def resolve_source(source: str | Path | None) -> Path:
    """A local directory for `source`: a path, a Hub repo id already downloaded, or a bundled
    model (None: the default model; or a name in BUNDLED_MODELS that is not a local path).
    Never touches the network."""
    path = bundled_or_path(source)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + weights)")
        return path
    if _REPO_ID.match(str(source)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(source), local_files_only=True))
        except Exception:  # not in the local cache
            raise CheckpointError(
                f"{source}: not a local directory and not in the local Hub cache; fetch it first with "
                f"`bolmo download {source} --output-dir DIR` and load DIR"
            ) from None
    raise CheckpointError(f"{source}: no such directory")


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this build can use, or DeviceError before any weight is read
    (torch raises assorted exception types, deep in the load, for a bogus or missing device)."""
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
        if device.type == "meta":  # tensors without data: the first value read (.tolist(), .item()) fails deep in torch
            raise RuntimeError("the meta device holds no data, so a model cannot run on it")
    except Exception as exc:  # RuntimeError, AssertionError ("not compiled with CUDA"), TypeError...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(why) > 200:  # torch's dispatcher errors run to a thousand characters on one line
            why = why.split(". ")[0][:200]
        raise DeviceError(f"device {str(device)!r} is not usable here: {why}") from None
    return device


def check_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`dtype` (a torch.dtype or its name, as `--dtype` takes it) as one the model can compute in,
    or ConfigError before any weight is read (torch's own error comes from deep inside the load)."""
    resolved = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or dtype_name(resolved) not in LOAD_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported (use one of {', '.join(LOAD_DTYPES)}, "
                          "or the torch.dtype of one)")
    return resolved


def load_config_and_counts(source: str | Path | None) -> tuple[BolmoConfig | OlmoConfig, dict[str, int], str]:
    """Config, parameters per component and checkpoint kind of anything `load` accepts, without
    reading any weights."""
    path = resolve_source(source)
    config, kind = read_model_config(path)
    return config, meta_model(config, f"{path}/config.json").num_parameters_by_component(), kind


def load(source: str | Path | None = None, device: str | torch.device = "cpu",
         dtype: str | torch.dtype = torch.float32) -> Bolmo | Olmo:
    """Load a Bolmo model (HF or OLMo-core directory, downloaded Hub repo id, or the bundled
    default) in eval mode as a `bolmo.inference.Bolmo`, with its tokenizer attached as
    `model.tokenizer`. Subword OLMo 2 / Olmo 3 directories (HF or OLMo-core) load as
    `bolmo.inference.Olmo`, with their tokenizer when the directory has a tokenizer.json.
    `dtype`: a torch.dtype or its name (float32, bfloat16, float16, float64). A CPU model also sets
    the process's C allocator to keep freed memory for reuse (bolmo.nn.freed_memory)."""
    device = check_device(device)
    dtype = check_dtype(dtype)
    if device.type == "cpu":
        keep_freed_memory()
    path = resolve_source(source)
    if path.name == DCP_SUBDIR and (path.parent / "config.json").is_file():
        path = path.parent  # an OLMo-core step's DCP directory: the step holds its config and tokenizer
    config, kind = read_model_config(path)
    tensors = checkpoint_tensors(path, kind)
    if isinstance(config, BolmoConfig):
        model = materialize(Bolmo, config, tensors, device, dtype, path)
        model.tokenizer = build_tokenizer(config, path)
    else:
        model = materialize(Olmo, config, tensors, device, dtype, path)
        model.tokenizer = SubwordTokenizer(path) if (path / "tokenizer.json").is_file() else None
    return model.eval()


def checkpoint_tensors(path: str | Path, kind: str) -> Iterable[tuple[str, Path, torch.Tensor]]:
    """(HF name, file, tensor) for every tensor of a checkpoint, read one at a time; OLMo-core
    tensors are renamed and reshaped by the converter's own plan."""
    if kind in ("bolmo-olmo-core", "olmo-core"):
        plan = plan_conversion(path, "hf")
        return ((t.name, plan.source.path, plan.produce(t)) for t in plan.tensors)
    return HFWeights(path).tensors()


def materialize(model_class: type[nn.Module], config, tensors: Iterable[tuple[str, Path, torch.Tensor]],
                device: str | torch.device, dtype: torch.dtype, checkpoint: Path) -> nn.Module:
    """Build `model_class(config)` on the meta device and assign the tensors of the `checkpoint`
    directory to it, checking every name and shape against what the config implies."""
    model = build_on_meta(model_class, config, f"{checkpoint / 'config.json'}")
    reference = model.state_dict()
    expected = {name: tuple(p.shape) for name, p in reference.items()}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, file, tensor in tensors:
        if name not in expected:
            unexpected.append(f"{name} (in {file})")
            continue
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {list(tensor.shape)}, the config implies {list(expected[name])}"
            )
        if reference[name].is_floating_point():
            check_weights(name, file, tensor)
        state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{checkpoint}: the checkpoint lacks {len(missing)} tensor(s) the config needs: "
                              f"{', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        raise CheckpointError(f"{checkpoint}: the checkpoint has {len(unexpected)} tensor(s) this model does not use: "
                              + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    model.load_state_dict(state, assign=True, strict=True)
    return model


def check_weights(name: str, file: Path, tensor: torch.Tensor) -> None:
    """A floating-point tensor with only finite values, or CheckpointError: an integer tensor would
    fail deep inside torch, and a NaN would make every score and generation silently meaningless."""
    if not tensor.is_floating_point():
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {dtype_name(tensor.dtype)}, "
                              "a weight must be floating point")
    check_finite(tensor, name, str(file))


def build_tokenizer(config: BolmoConfig, model_dir: Path | None) -> ByteTokenizer:
    """The byte tokenizer, with the subword expander when the model uses expanded embeddings."""
    expander = None
    if config.add_expanded_embeddings:
        identifier = config.tokenizer_config.original_identifier
        if not identifier:
            raise ConfigError("config.json: tokenizer_config.original_identifier must name the subword tokenizer")
        expander = SubwordExpander.from_directory(resolve_subword_tokenizer(identifier, model_dir), config.tokenizer_config)
        largest = max(expander.terminal)
        if largest >= config.subword_vocab_size:
            raise TokenizerError(
                f"subword tokenizer {identifier!r} has id {largest}, beyond subword_vocab_size {config.subword_vocab_size}"
            )
    return ByteTokenizer(config.tokenizer_config, expander)
