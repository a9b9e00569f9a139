"""`bolmo.load`: find a checkpoint, build the model on the meta device, and materialize it from
the file tensor by tensor, so peak memory stays near one copy of the weights."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from bolmo.config import BolmoConfig, read_json
from bolmo.errors import CheckpointError, ConfigError, TokenizerError
from bolmo.model.bolmo import BolmoForCausalLM
from bolmo.tokenizer import ByteTokenizer, SubwordExpander, resolve_subword_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_source(source: str | Path | None) -> Path:
    """A local directory for `source`: a path, a Hub repo id already downloaded, or (None) the
    bundled default model. Never touches the network."""
    if source is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the bundled default model is missing from {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    path = Path(source).expanduser()
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


def checkpoint_kind(path: Path) -> str:
    """'bolmo' (HF), 'bolmo-olmo-core', 'olmo-core', or the HF model_type of a subword model
    (decided by `bolmo.checkpoint.model_config.model_kind`, as for every other command)."""
    from bolmo.checkpoint.model_config import model_kind

    return model_kind(path)


def load_config(path: Path, kind: str) -> BolmoConfig:
    if kind == "bolmo":
        return BolmoConfig.from_file(path / "config.json")
    if kind == "bolmo-olmo-core":
        from bolmo.checkpoint.olmo_core import bolmo_config_from_olmo_core

        return bolmo_config_from_olmo_core(read_json(path / "config.json"))
    raise ConfigError(f"{path / 'config.json'}: model_type {kind!r} is not a Bolmo model")


def load_config_and_counts(source: str | Path | None) -> tuple[BolmoConfig, dict[str, int], str]:
    """Config, parameters per component and checkpoint kind, without reading any weights."""
    path = resolve_source(source)
    kind = checkpoint_kind(path)
    config = load_config(path, kind)
    with torch.device("meta"):
        model = BolmoForCausalLM(config)
    return config, model.num_parameters_by_component(), kind


def load(source: str | Path | None = None, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a Bolmo model (HF or OLMo-core directory, downloaded Hub repo id, or the bundled
    default) in eval mode, with its tokenizer attached as `model.tokenizer`. Subword OLMo 2 /
    Olmo 3 directories (HF or OLMo-core) load as `bolmo.model.olmo.OlmoForCausalLM`."""
    path = resolve_source(source)
    kind = checkpoint_kind(path)
    if kind in ("olmo2", "olmo3", "olmo-core"):  # a subword OLMo model: same surface, its own tokenizer
        from bolmo.subword import load_olmo

        return load_olmo(path, olmo_core=kind == "olmo-core", device=device, dtype=dtype)
    if kind == "bolmo":
        from bolmo.checkpoint.safetensors_io import HFWeights

        config = load_config(path, kind)
        tensors = HFWeights(path).tensors()
    elif kind == "bolmo-olmo-core":
        from bolmo.checkpoint.olmo_core import load_bolmo_olmo_core

        config, state = load_bolmo_olmo_core(path)
        tensors = ((name, path / "model_and_optim", tensor) for name, tensor in state.items())
    else:
        raise ConfigError(f"{path / 'config.json'}: model_type {kind!r} is not a Bolmo model")
    model = materialize(BolmoForCausalLM, config, tensors, device, dtype)
    model.tokenizer = build_tokenizer(config, path)
    return model.eval()


def materialize(model_class: type[nn.Module], config, tensors: Iterable[tuple[str, Path, torch.Tensor]],
                device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """Build `model_class(config)` on the meta device and assign checkpoint tensors to it,
    checking every name and shape against what the config implies."""
    with torch.device("meta"):
        model = model_class(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
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
