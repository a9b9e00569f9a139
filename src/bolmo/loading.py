"""`bolmo.load`: find a checkpoint, build the model on the meta device, and materialize it from
the file tensor by tensor, so peak memory stays near one copy of the weights."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from bolmo.checkpoint.convert import plan_conversion
from bolmo.checkpoint.expected import meta_model
from bolmo.checkpoint.model_config import model_kind, read_model_config
from bolmo.checkpoint.safetensors_io import HFWeights
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError, ConfigError, DeviceError, TokenizerError
from bolmo.inference import Bolmo, Olmo
from bolmo.olmo.config import OlmoConfig
from bolmo.olmo.tokenizer import SubwordTokenizer
from bolmo.tokenizer import ByteTokenizer, SubwordExpander, resolve_subword_tokenizer

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default_model"
# Models shipped inside the package, by the names every `--model` accepts: the toy Bolmo and the
# subword OLMo 2 teacher it was byteified from (recipes/toy), so a Bolmo-vs-teacher comparison
# (`bolmo eval cute --model default --model default-teacher`) runs offline.
BUNDLED_MODELS = {"default": DEFAULT_MODEL_DIR, "default-teacher": ASSETS / "default_teacher"}
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_source(source: str | Path | None) -> Path:
    """A local directory for `source`: a path, a Hub repo id already downloaded, or a bundled
    model (None: the default model; or a name in BUNDLED_MODELS that is not a local path).
    Never touches the network."""
    path = Path(source).expanduser() if source is not None else None
    if path is None or (str(source) in BUNDLED_MODELS and not path.exists()):
        name = "default" if source is None else str(source)
        bundled = BUNDLED_MODELS[name]
        if not (bundled / "config.json").is_file():
            raise CheckpointError(f"the bundled model {name!r} is missing from {bundled}")
        return bundled
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
    except Exception as exc:  # RuntimeError, AssertionError ("not compiled with CUDA"), TypeError...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeviceError(f"device {str(device)!r} is not usable here: {why}") from None
    return device


def checkpoint_kind(path: Path) -> str:
    """'bolmo' (HF), 'bolmo-olmo-core', 'olmo-core', or the HF model_type of a subword model
    (decided by `bolmo.checkpoint.model_config.model_kind`, as for every other command)."""
    return model_kind(path)


def load_config_and_counts(source: str | Path | None) -> tuple[BolmoConfig | OlmoConfig, dict[str, int], str]:
    """Config, parameters per component and checkpoint kind of anything `load` accepts, without
    reading any weights."""
    config, kind = read_model_config(resolve_source(source))
    return config, meta_model(config).num_parameters_by_component(), kind


def load(source: str | Path | None = None, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> Bolmo | Olmo:
    """Load a Bolmo model (HF or OLMo-core directory, downloaded Hub repo id, or the bundled
    default) in eval mode as a `bolmo.inference.Bolmo`, with its tokenizer attached as
    `model.tokenizer`. Subword OLMo 2 / Olmo 3 directories (HF or OLMo-core) load as
    `bolmo.inference.Olmo`, with their tokenizer when the directory has a tokenizer.json."""
    device = check_device(device)
    path = resolve_source(source)
    config, kind = read_model_config(path)
    tensors = checkpoint_tensors(path, kind)
    if isinstance(config, BolmoConfig):
        model = materialize(Bolmo, config, tensors, device, dtype)
        model.tokenizer = build_tokenizer(config, path)
    else:
        model = materialize(Olmo, config, tensors, device, dtype)
        model.tokenizer = SubwordTokenizer(path) if (path / "tokenizer.json").is_file() else None
    return model.eval()


def checkpoint_tensors(path: Path, kind: str) -> Iterable[tuple[str, Path, torch.Tensor]]:
    """(HF name, file, tensor) for every tensor of a checkpoint, read one at a time; OLMo-core
    tensors are renamed and reshaped by the converter's own plan."""
    if kind in ("bolmo-olmo-core", "olmo-core"):
        plan = plan_conversion(path, "hf")
        return ((t.name, plan.source.path, plan.produce(t)) for t in plan.tensors)
    return HFWeights(path).tensors()


def materialize(model_class: type[nn.Module], config, tensors: Iterable[tuple[str, Path, torch.Tensor]],
                device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """Build `model_class(config)` on the meta device and assign checkpoint tensors to it,
    checking every name and shape against what the config implies."""
    with torch.device("meta"):
        model = model_class(config)
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
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s) the config needs: {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} tensor(s) this model does not use: "
                              + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    model.load_state_dict(state, assign=True, strict=True)
    return model


def check_weights(name: str, file: Path, tensor: torch.Tensor) -> None:
    """A floating-point tensor with only finite values, or CheckpointError: an integer tensor would
    fail deep inside torch, and a NaN would make every score and generation silently meaningless."""
    if not tensor.is_floating_point():
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, "
                              "a weight must be floating point")
    if not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"{file}: tensor {name!r} holds NaN or infinite values")


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
