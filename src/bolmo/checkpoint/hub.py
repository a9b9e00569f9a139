"""Download released Bolmo checkpoints from the Hugging Face Hub.

A released repo (allenai/Bolmo-1B, allenai/Bolmo-7B) holds the HF model at its root and the native
OLMo-core checkpoint under `olmo_core/`. Every transfer goes through huggingface_hub, so interrupted
files resume, and HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE mean what they mean for every other Hub
tool. Files go straight into the output directory (the library's `local_dir` mode), never into the
shared cache, so a 7B checkpoint is stored once.

Layouts written into DIR:
- `hf`: the root files of the repo (config, weights or shards + index, tokenizer files, generation
  config, remote code); the subword tokenizer named by `tokenizer_config.original_identifier`
  goes into the local Hub cache, where `bolmo.tokenizer.resolve_subword_tokenizer` finds it offline.
- `olmo-core`: `olmo_core/` with the prefix removed (DIR/config.json, DIR/model_and_optim/,
  DIR/.metadata.json), as the original download guide lays it out.
- `all`: both, the native checkpoint under DIR/olmo_core/.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bolmo.checkpoint.layout import DCP_SUBDIR
from bolmo.errors import BolmoError, CheckpointError, TokenizerError, warn

ALIASES = {"1b": "allenai/Bolmo-1B", "7b": "allenai/Bolmo-7B"}
FORMATS = ("hf", "olmo-core", "all")
NATIVE_DIR = "olmo_core"
# Root-level files of an HF model: config and generation config, weights (single file or shards
# plus index), tokenizer files, chat template, remote code (`trust_remote_code`), model card.
HF_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.md", "LICENSE*"]
# fnmatch's "*" also matches "/", so "root files only" has to be said as "ignore anything nested".
_NESTED = ["*/*"]
_NATIVE_PATTERNS = [f"{NATIVE_DIR}/*"]
# Where `olmo-core` downloads land before being hard-linked into place: inside DIR, so links work
# and the library's resume bookkeeping (`.cache/huggingface/` beside the files) stays valid.
_STAGING = Path(".cache") / "bolmo"
_LOGIN = "run `huggingface-cli login` or set HF_TOKEN (or pass --token)"
_COMMIT_HASH = re.compile(r"[0-9a-f]{7,40}")  # a revision given as a (possibly short) commit hash


class HubError(BolmoError):
    """The Hub refused or could not serve a download: authentication, missing repo or revision,
    offline mode with nothing downloaded before, or a network failure."""


@dataclass(frozen=True)
class Plan:
    """What one download will fetch. `commit` is None in offline mode, where nothing can be listed
    and the files of an earlier download are used as they are."""

    repo_id: str
    revision: str
    fmt: str
    commit: str | None
    repo_files: dict[str, int]  # every file of the repo at `commit` -> size in bytes

    @property
    def selected(self) -> dict[str, int]:
        """The repo files this format downloads (the same filter snapshot_download applies)."""
        from huggingface_hub.utils import filter_repo_objects

        names: set[str] = set()
        for allow, ignore in _selections(self.fmt):
            names.update(filter_repo_objects(self.repo_files, allow_patterns=allow, ignore_patterns=ignore))
        return {name: self.repo_files[name] for name in sorted(names)}


@dataclass(frozen=True)
class DownloadResult:
    plan: Plan
    path: Path
    files: int  # files now in `path` (hidden .cache/ bookkeeping excluded)
    total_bytes: int
    tokenizer: Path | None  # where the subword tokenizer was found or stored, if the config names one


def resolve_repo_id(name: str) -> str:
    """`1b`/`7b` -> the released repos; anything else must be a Hub repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = ALIASES.get(name.lower(), name)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"{name!r} is neither 1b, 7b nor a Hub repo id such as allenai/Bolmo-1B") from None
    return repo_id


def plan_download(repo: str, revision: str | None = None, fmt: str = "hf", token: str | None = None) -> Plan:
    """List the repo once, pinning the revision to a commit so every file comes from the same one,
    and refuse early when the requested layout is not in the repo."""
    if fmt not in FORMATS:
        raise BolmoError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import OfflineModeIsEnabled

    repo_id = resolve_repo_id(repo)
    revision = revision or "main"
    with _hub_errors(repo_id, revision):
        try:
            info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        except OfflineModeIsEnabled:
            return Plan(repo_id, revision, fmt, commit=None, repo_files={})
    files = {s.rfilename: s.size or (s.lfs.size if s.lfs else 0) for s in info.siblings or []}
    plan = Plan(repo_id, revision, fmt, commit=info.sha, repo_files=files)
    has_native = any(name.startswith(NATIVE_DIR + "/") for name in files)
    if fmt in ("olmo-core", "all") and not has_native:
        raise CheckpointError(
            f"{repo_id} at revision {revision} has no {NATIVE_DIR}/ folder, so no native OLMo-core checkpoint "
            f"(see {constants.ENDPOINT}/{repo_id}/tree/{revision}); use --format hf for the HF model"
        )
    if fmt in ("hf", "all") and "config.json" not in files:
        hint = "; its native checkpoint is there: use --format olmo-core" if has_native else ""
        raise CheckpointError(f"{repo_id} at revision {revision} has no config.json at its root, so no HF model{hint}")
    # Gated repos list their files to anyone but serve them only to accepted accounts, and when a
    # file request fails the library silently keeps a same-named file already in the output
    # directory. Asking for one file first turns a refusal into an error before anything is kept.
    with _hub_errors(repo_id, revision):
        get_hf_file_metadata(hf_hub_url(repo_id, next(iter(plan.selected)), revision=info.sha), token=token)
    return plan


def fetch(plan: Plan, output_dir: str | Path, token: str | None = None) -> DownloadResult:
    """Carry out `plan` into `output_dir`. Running it again after an interruption resumes the
    unfinished files and skips the finished ones."""
    from huggingface_hub import snapshot_download

    out = Path(output_dir).expanduser().resolve()
    _refuse_mixed_layouts(out, plan.fmt)
    pinned = plan.commit or plan.revision
    with _hub_errors(plan.repo_id, plan.revision, out), _quiet_offline_reuse(plan.commit is None):
        for allow, ignore in _selections(plan.fmt):
            staged = plan.fmt == "olmo-core"
            if staged and plan.commit is None and not (out / _STAGING / NATIVE_DIR).is_dir():
                continue  # offline, the staged copy deleted (as the guide allows): what is in place is checked below
            snapshot_download(plan.repo_id, revision=pinned, local_dir=out / _STAGING if staged else out,
                              allow_patterns=allow, ignore_patterns=ignore, token=token)
            if staged:
                _link_tree(out / _STAGING / NATIVE_DIR, out)
    _check_sizes(plan, out)
    tokenizer = _fetch_subword_tokenizer(plan, out, token) if plan.fmt in ("hf", "all") else None
    _require_layout(plan, out)
    _check_offline_revision(plan, out)
    sizes = [p.stat().st_size for p in _visible_files(out)]
    return DownloadResult(plan, out, files=len(sizes), total_bytes=sum(sizes), tokenizer=tokenizer)


def download(repo: str, output_dir: str | Path, revision: str | None = None, fmt: str = "hf",
             token: str | None = None) -> Path:
    """Download `repo` (`1b`, `7b` or a repo id) at `revision` in layout `fmt` into `output_dir`;
    returns the output directory. See the module docstring for the layouts."""
    return fetch(plan_download(repo, revision, fmt, token), output_dir, token).path


def verify(output_dir: str | Path, fmt: str) -> list[str]:
    """Structural problems of the downloaded layout(s), from the same checker as `bolmo verify`
    (empty when it finds none; each message names its file)."""
    from bolmo.checkpoint.verify import verify_directory

    out = Path(output_dir)
    roots = {"hf": [out], "olmo-core": [out], "all": [out, out / NATIVE_DIR]}[fmt]
    return [problem for root in roots for problem in verify_directory(root).problems]


def _selections(fmt: str) -> list[tuple[list[str], list[str] | None]]:
    """(allow_patterns, ignore_patterns) per snapshot_download call for a format."""
    hf, native = (HF_PATTERNS, _NESTED), (_NATIVE_PATTERNS, None)
    return {"hf": [hf], "olmo-core": [native], "all": [hf, native]}[fmt]


def _refuse_mixed_layouts(out: Path, fmt: str) -> None:
    """Both layouts keep a `config.json` at the top with different meanings: never let one
    silently overwrite the other."""
    if fmt == "olmo-core":
        clash = [n for n in ("model.safetensors", "model.safetensors.index.json") if (out / n).exists()]
        other = "an HF model"
    else:
        clash = [DCP_SUBDIR] if (out / DCP_SUBDIR).exists() else []
        other = "a native OLMo-core checkpoint"
    if clash:
        raise CheckpointError(
            f"{out} already holds {other} ({clash[0]}), whose config.json this download would overwrite; "
            f"use another --output-dir, or --format all (native checkpoint under {NATIVE_DIR}/)"
        )


def _link_tree(src_root: Path, dst_root: Path) -> None:
    """Give every staged file its place in the guide's layout. Hard links cost no space and keep
    the staged copy, so a later run finds its files and downloads nothing again."""
    for src in sorted(p for p in src_root.rglob("*") if p.is_file()):
        dst = dst_root / src.relative_to(src_root)
        if dst.exists() and os.path.samefile(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # no hard links on this filesystem: move (a later run downloads it again)
            os.replace(src, dst)


def _fetch_subword_tokenizer(plan: Plan, out: Path, token: str | None) -> Path | None:
    """Make the subword tokenizer named by config.json available offline: from a subfolder of the
    model repo if it ships one (kept beside the model), otherwise from its own Hub repo into the
    local cache. A local path is left alone."""
    from huggingface_hub import snapshot_download

    from bolmo.tokenizer import SUBWORD_TOKENIZER_FILES, resolve_subword_tokenizer

    identifier = _original_identifier(out / "config.json")
    if identifier is None:
        return None
    inside = [f"{identifier}/{name}" for name in SUBWORD_TOKENIZER_FILES if f"{identifier}/{name}" in plan.repo_files]
    if inside:
        with _hub_errors(plan.repo_id, plan.revision, out):
            snapshot_download(plan.repo_id, revision=plan.commit, local_dir=out,
                              allow_patterns=[glob.escape(name) for name in inside], token=token)
        return out / identifier
    try:
        return resolve_subword_tokenizer(identifier, out)  # a local directory, or already cached
    except TokenizerError:
        if not _is_hub_repo_id(identifier):
            return None  # a local path that does not exist: loading the model reports it
    try:
        with _hub_errors(identifier, "main"):
            local = Path(snapshot_download(identifier, allow_patterns=SUBWORD_TOKENIZER_FILES, token=token))
    except HubError as exc:
        raise HubError(f"the model is in {out}, but its subword tokenizer could not be fetched: {exc}") from exc
    if not (local / "tokenizer.json").is_file():
        raise TokenizerError(
            f"Hub repo {identifier} (config.json tokenizer_config.original_identifier) has no tokenizer.json"
        )
    return local


def _original_identifier(config_file: Path) -> str | None:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # reported by _require_layout or by loading, with the file named
    value = (config.get("tokenizer_config") or {}).get("original_identifier")
    return value if isinstance(value, str) and value else None


def _is_hub_repo_id(identifier: str) -> bool:
    """`owner/name` that is not written like a path (released configs name `allenai/dolma2-tokenizer`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if identifier.count("/") != 1 or identifier.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(identifier)
    except HFValidationError:
        return False
    return True


def _check_sizes(plan: Plan, out: Path) -> None:
    """Every file must have the size the Hub listed: the library keeps an existing file when it
    cannot check it against the Hub, which may be left over from another revision or repo."""
    for name, size in plan.selected.items():
        path = out / (name.removeprefix(NATIVE_DIR + "/") if plan.fmt == "olmo-core" else name)
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise CheckpointError(
                f"{path} {found} where {plan.repo_id} at commit {plan.commit} has {size} bytes (the Hub did not "
                f"serve it, so a file from an earlier download was kept); delete it and run the command again"
            )


def missing_layout(plan: Plan, out: Path) -> list[str]:
    """The files of the requested layout that `out` lacks (an offline run can only use what is
    there): the config, and the weights (HF: model.safetensors, or the index and every shard it names)."""
    needed = {"hf": ["config.json"], "olmo-core": ["config.json", DCP_SUBDIR],
              "all": ["config.json", f"{NATIVE_DIR}/{DCP_SUBDIR}"]}[plan.fmt]
    missing = [name for name in needed if not (out / name).exists()]
    return missing + (_missing_hf_weights(out) if plan.fmt in ("hf", "all") else [])


def _missing_hf_weights(out: Path) -> list[str]:
    from bolmo.checkpoint.safetensors_io import INDEX_NAME

    if (out / "model.safetensors").is_file():
        return []
    if not (out / INDEX_NAME).is_file():
        return ["model.safetensors"]
    try:
        shards = set(json.loads((out / INDEX_NAME).read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # a damaged index is verify's to report, naming what is wrong with it
    return sorted(name for name in shards if isinstance(name, str) and not (out / name).is_file())


def _require_layout(plan: Plan, out: Path) -> None:
    """Catch an offline run that found only part of an earlier download, before reporting success."""
    missing = missing_layout(plan, out)
    if missing:
        why = "offline mode found only part of an earlier download" if plan.commit is None else "the repo lacks it"
        raise CheckpointError(f"{out / missing[0]} is missing after downloading {plan.repo_id} ({why})")


def _check_offline_revision(plan: Plan, out: Path) -> None:
    """Offline, no revision can be resolved and the files in place are reused whatever commit they
    came from: a revision given as a commit hash must be the commit the earlier download recorded
    (huggingface_hub's `.cache/**/*.metadata`, first line); a branch or tag cannot be checked,
    which is said (main, the default, is taken to mean "what is there")."""
    if plan.commit is not None or plan.revision == "main":
        return
    commits = sorted({line for path in (out / ".cache").rglob("*.metadata") if (line := _first_line(path))})
    held = f"commit {', '.join(commits)}" if commits else "files without a recorded commit"
    if _COMMIT_HASH.fullmatch(plan.revision) and commits:
        if any(not commit.startswith(plan.revision) for commit in commits):
            raise CheckpointError(f"offline mode: {out} holds {held} of {plan.repo_id}, not revision {plan.revision}; "
                                  "download that revision online, or into another directory")
        return
    warn(f"offline mode: cannot check that {out} is revision {plan.revision!r} of {plan.repo_id} (it holds {held})")


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.readline().strip()
    except OSError:
        return ""


def _visible_files(root: Path) -> Iterator[Path]:
    """Files of the download itself, without the hidden `.cache/` bookkeeping at the top."""
    for path in root.rglob("*"):
        if path.is_file() and path.relative_to(root).parts[0] != ".cache":
            yield path


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub cannot be reached now, or None when it answers (or in offline mode, where the
    Hub libraries fail at once anyway): one request without retries, so that a machine without a
    network learns it in seconds, not after huggingface_hub's retries (about 25 s, `datasets`)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is the answer
        text = str(exc).strip()
        return f"{constants.ENDPOINT}: {text.splitlines()[0] if text else type(exc).__name__}"
    return None


@contextmanager
def _quiet_offline_reuse(offline: bool) -> Iterator[None]:
    """Offline, huggingface_hub logs a multi-line warning each time it returns the files already in
    the directory ("Returning existing local_dir ..."): the CLI says that in one line itself."""
    import logging

    hub_logger = logging.getLogger("huggingface_hub._snapshot_download")
    level = hub_logger.level
    if offline:
        hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


@contextmanager
def _hub_errors(repo_id: str, revision: str, out: Path | None = None) -> Iterator[None]:
    """Turn whatever a Hub call raises (huggingface_hub, requests, hf_xet, the file system) into a
    one-line HubError; the original stays chained for Python callers. Wraps library calls only."""
    try:
        yield
    except Exception as exc:
        raise HubError(_explain(exc, repo_id, revision, out)) from exc


def _explain(exc: Exception, repo_id: str, revision: str, out: Path | None) -> str:
    """The one-line message and advice for a failed Hub operation."""
    from huggingface_hub import constants, errors
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    xet_refused = getattr(errors, "XetAuthorizationError", ())  # huggingface_hub < 2 only
    cut, unreachable, transfer = _transport_errors()
    endpoint = constants.ENDPOINT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    offline = isinstance(exc, OfflineModeIsEnabled) or isinstance(exc.__cause__, OfflineModeIsEnabled)
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is gated (HTTP {status}): accept its terms at {endpoint}/{repo_id} while logged in, "
                f"then {_LOGIN}")
    if isinstance(exc, RepositoryNotFoundError):
        if status == 401:
            return (f"{repo_id} was not found or needs authentication (HTTP 401): if it is private or gated, {_LOGIN}, "
                    f"and accept its terms at {endpoint}/{repo_id}; otherwise check the name")
        return f"repository {repo_id} not found on {endpoint} (HTTP {status}); check the name (aliases: 1b, 7b)"
    if xet_refused and isinstance(exc, xet_refused):
        return f"the Hub's Xet storage refused {repo_id}: {_LOGIN} with a token that can read it"
    if isinstance(exc, RevisionNotFoundError):
        return (f"revision {revision!r} not found in {repo_id}; give a branch, tag or commit of that repo "
                f"(default: main)")
    if offline or (isinstance(exc, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE):
        where = f" in {out}" if out is not None else " in the local cache"
        return (f"offline mode (HF_HUB_OFFLINE=1) and {repo_id} was not downloaded{where} before; "
                f"unset HF_HUB_OFFLINE to download it")
    if isinstance(exc, LocalEntryNotFoundError):  # the Hub could not be asked and nothing is local
        return f"cannot reach {endpoint} to download {repo_id}; check the network or proxy and run the command again"
    if isinstance(exc, EntryNotFoundError):
        return f"a file of {repo_id} at {revision} vanished during the download (HTTP 404); run the command again"
    if isinstance(exc, HfHubHTTPError):
        if status == 401:
            return f"authentication failed for {repo_id} (HTTP 401: token rejected); {_LOGIN} with a valid token"
        if status == 403:
            return (f"access to {repo_id} denied (HTTP 403): the token lacks read access or its terms are not accepted "
                    f"at {endpoint}/{repo_id}; {_LOGIN} with a token that can read it")
        return f"{endpoint} answered HTTP {status} for {repo_id}; try again later"
    if isinstance(exc, cut):
        return (f"the connection to {endpoint} closed in the middle of a file of {repo_id}; run the same command "
                f"again to resume where it stopped")
    if isinstance(exc, unreachable):
        return (f"cannot reach {endpoint} ({_reason(exc)}); check the network or proxy, or set HF_HUB_OFFLINE=1 "
                f"to use an earlier download")
    if isinstance(exc, transfer):
        return (f"the transfer of {repo_id} from {endpoint} failed ({_reason(exc)}); run the same command again "
                f"to resume")
    target = f" into {out}" if out is not None else ""
    return (f"downloading {repo_id}{target} failed ({type(exc).__name__}: {_reason(exc)}); run the same command "
            f"again to resume")


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Exception classes of the HTTP client huggingface_hub uses (requests for 0.x, httpx for 1.x,
    httpx2 for 2.x): (connection closed mid-file, host unreachable or timed out, any transfer error)."""
    cut: list[type] = []
    unreachable: list[type] = []
    transfer: list[type] = []
    for name in ("requests", "httpx", "httpx2"):
        try:
            lib = importlib.import_module(name)
        except ImportError:
            continue
        if name == "requests":
            cut.append(lib.exceptions.ChunkedEncodingError)
            unreachable += [lib.ConnectionError, lib.Timeout]
            transfer.append(lib.RequestException)
        else:
            cut += [lib.RemoteProtocolError, lib.ReadError]
            unreachable += [lib.ConnectError, lib.TimeoutException]
            transfer.append(lib.TransportError)
    return tuple(cut), tuple(unreachable), tuple(transfer)


def _reason(exc: BaseException) -> str:
    """The informative part of an exception: the OS error inside urllib3's nested wrappers
    ("[Errno 111] Connection refused"), else the first line."""
    text = str(exc)
    if errno := re.search(r"\[Errno -?\d+\] [^'\")]+", text):
        return errno[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
