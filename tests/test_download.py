"""`bolmo download` against a fake Hub on 127.0.0.1 (fake_hub.py): layouts, resume,
error messages, offline mode, the subword tokenizer. Nothing here leaves the machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bolmo.checkpoint.hub import HubError, download
from bolmo.cli import main
from bolmo.errors import CheckpointError
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES
from fake_hub import FakeHub

REPO = "allenai/Bolmo-1B"  # served by the fake Hub, so the `1b` alias is exercised too
TOKENIZER_REPO = "test-org/subword-tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _read_tree(root: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hf_files(original_identifier: str) -> dict[str, bytes]:
    config = json.loads((BOLMO_FIXTURES / "tiny-gqa" / "config.json").read_text())
    config["tokenizer_config"]["original_identifier"] = original_identifier
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "model.safetensors": (BOLMO_FIXTURES / "tiny-gqa" / "model.safetensors").read_bytes(),
        "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}',
        "modeling_bolmo.py": b"# remote code (trust_remote_code)\n",
        "README.md": b"# Bolmo\n",
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "extras/notes.txt": b"not part of any layout\n",
    }


def _native_files() -> dict[str, bytes]:
    files = _read_tree(CKPT_FIXTURES / "bolmo_olmo_core", prefix="olmo_core/")
    files.pop("olmo_core/expected_model_state.safetensors")
    files["olmo_core/.metadata.json"] = b'{"ephemeral": false, "version": "2.3.0"}'
    return files


HF_FILES = _hf_files(TOKENIZER_REPO)
NATIVE_FILES = _native_files()
HF_ROOT = ["README.md", "config.json", "generation_config.json", "model.safetensors", "modeling_bolmo.py"]


def reset_sessions() -> None:
    """Drop the library's HTTP sessions (huggingface_hub 0.x: reset_sessions; 1.x and 2.x: close_session)."""
    from huggingface_hub import utils

    (getattr(utils, "reset_sessions", None) or utils.close_session)()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running fake Hub that huggingface_hub talks to, with a private cache and no token.

    The library reads HF_ENDPOINT etc. into `constants` at import time (other tests may have
    imported it already), so the constants are patched; sessions are reset because they remember
    offline mode from when they were created."""
    from huggingface_hub import constants, file_download

    with FakeHub() as fake:
        home = tmp_path / "hf_home"
        template = fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)  # 0.x copies it
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        reset_sessions()
        fake.add_repo(REPO, HF_FILES | NATIVE_FILES)
        fake.add_repo(TOKENIZER_REPO, {name: (BOLMO_FIXTURES / "tiny-gqa" / "subword_tokenizer" / name).read_bytes()
                                       for name in TOKENIZER_FILES} | {"pytorch_model.bin": b"\0" * 50_000})
        yield fake
    reset_sessions()


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reset_sessions()


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run `bolmo ...`; returns (exit code, stdout, the error line or "")."""
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("bolmo download: error:")]
    assert len(errors) <= 1
    return code, captured.out, errors[0] if errors else ""


def test_hf_format_fetches_root_files_and_tokenizer(hub, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, error = _cli(capsys, "download", "1b", "--output-dir", str(out))
    assert (code, error) == (0, "")
    downloaded = {k: v for k, v in _read_tree(out).items() if not k.startswith(".cache/")}
    assert downloaded == {name: HF_FILES[name] for name in HF_ROOT}  # no olmo_core/, extras/, .gitattributes
    assert "5 files" in stdout and str(out) in stdout
    # The subword tokenizer went to the Hub cache, tokenizer files only.
    cached = list((tmp_path / "hf_home" / "hub").glob("models--test-org--subword-tiny/snapshots/*/*"))
    assert sorted(p.name for p in cached) == sorted(TOKENIZER_FILES)


def test_subword_tokenizer_resolves_offline_after_download(hub, tmp_path, monkeypatch):
    from bolmo.tokenizer import resolve_subword_tokenizer

    out = download("1b", tmp_path / "hf")
    _go_offline(monkeypatch)
    found = resolve_subword_tokenizer(TOKENIZER_REPO, out)
    for name in TOKENIZER_FILES:
        assert (found / name).read_bytes() == hub.repos[TOKENIZER_REPO].files[name]


def test_olmo_core_layout_matches_the_guide(hub, tmp_path):
    out = download(REPO, tmp_path / "native", fmt="olmo-core")
    visible = {k: v for k, v in _read_tree(out).items() if not k.startswith(".cache/")}
    assert visible == {name.removeprefix("olmo_core/"): data for name, data in NATIVE_FILES.items()}
    assert (out / "config.json").is_file() and (out / ".metadata.json").is_file()
    assert (out / "model_and_optim" / ".metadata").is_file()
    assert sorted(p.name for p in (out / "model_and_optim").glob("*.distcp")) == [f"__0_{i}.distcp" for i in range(6)]

    # A second run finds every file (hard links keep the library's bookkeeping valid): no transfers.
    before = sum(1 for s in hub.seen if s.method == "GET" and "/resolve/" in s.path)
    download(REPO, out, fmt="olmo-core")
    assert sum(1 for s in hub.seen if s.method == "GET" and "/resolve/" in s.path) == before


def test_all_format_keeps_native_checkpoint_under_olmo_core(hub, tmp_path):
    out = download(REPO, tmp_path / "all", fmt="all")
    visible = {k: v for k, v in _read_tree(out).items() if not k.startswith(".cache/")}
    assert visible == {name: HF_FILES[name] for name in HF_ROOT} | NATIVE_FILES


def test_interrupted_transfer_resumes_with_a_range_request(hub, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    # The library writes whole chunks (10 MB by default): a broken chunk is fetched again.
    # Small chunks make a 1.6 MB file keep some bytes from the broken first attempt.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    out = tmp_path / "resume"
    sent = 300_000
    hub.drop_connection(REPO, "model.safetensors", after_bytes=sent)
    code, _, error = _cli(capsys, "download", "1b", "-o", str(out))
    if huggingface_hub.__version__.startswith("0."):  # 0.x gives up: the same command again resumes
        assert code == 2
        assert "closed in the middle of a file of allenai/Bolmo-1B" in error and "run the same command again" in error
        assert not (out / "model.safetensors").exists()
        code, _, error = _cli(capsys, "download", "1b", "-o", str(out))
    # 1.x and 2.x resume by themselves, within the same command
    assert (code, error) == (0, "")
    gets = hub.gets(REPO, "model.safetensors")
    assert len(gets) == 2 and "Range" not in gets[0].headers
    kept = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= sent
    assert (out / "model.safetensors").read_bytes() == HF_FILES["model.safetensors"]


def test_connection_cut_for_good_is_one_line_error(hub, tmp_path, capsys, monkeypatch):
    """However often the library retries, a connection that keeps closing ends in the advice to resume."""
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the library's back-off between retries
    hub.drop_connection(REPO, "model.safetensors", after_bytes=0, times=20)
    code, _, error = _cli(capsys, "download", "1b", "-o", str(tmp_path / "cut"))
    assert code == 2
    assert "closed in the middle of a file of allenai/Bolmo-1B" in error and "run the same command again" in error


def test_repo_without_olmo_core_folder(hub, tmp_path, capsys):
    hub.add_repo("someone/hf-only", HF_FILES)
    code, _, error = _cli(capsys, "download", "someone/hf-only", "-o", str(tmp_path / "x"), "--format", "olmo-core")
    assert code == 2
    assert "someone/hf-only" in error and "revision main" in error and "olmo_core/" in error
    assert "--format hf" in error
    assert not (tmp_path / "x").exists()


def test_private_repo_needs_a_token(hub, tmp_path, capsys, monkeypatch):
    hub.add_repo("someone/private", HF_FILES | NATIVE_FILES, token="secret")
    code, _, error = _cli(capsys, "download", "someone/private", "-o", str(tmp_path / "a"), "--format", "olmo-core")
    assert code == 2 and "401" in error and "huggingface-cli login" in error and "HF_TOKEN" in error

    code, _, error = _cli(capsys, "download", "someone/private", "-o", str(tmp_path / "b"), "--format", "olmo-core",
                          "--token", "wrong")
    assert code == 2 and "token rejected" in error

    monkeypatch.setenv("HF_TOKEN", "secret")
    code, _, error = _cli(capsys, "download", "someone/private", "-o", str(tmp_path / "c"), "--format", "olmo-core")
    assert (code, error) == (0, "")
    assert (tmp_path / "c" / "model_and_optim" / ".metadata").is_file()


def test_gated_repo_says_to_accept_the_terms(hub, tmp_path, capsys):
    hub.add_repo("someone/gated", HF_FILES | NATIVE_FILES, token="secret", gated=True)
    code, _, error = _cli(capsys, "download", "someone/gated", "-o", str(tmp_path / "g"), "--format", "olmo-core")
    assert code == 2
    assert "gated" in error and "accept its terms" in error and "huggingface-cli login" in error


def test_refused_files_never_pass_as_downloaded(hub, tmp_path, capsys):
    """When the Hub refuses a file, huggingface_hub keeps a same-named local file without a word."""
    out = download(REPO, tmp_path / "kept")
    hub.add_repo("someone/gated", HF_FILES, token="secret", gated=True)
    code, _, error = _cli(capsys, "download", "someone/gated", "-o", str(out))
    assert code == 2 and "gated" in error  # refused before anything is kept

    repo = hub.repos[REPO]
    repo.sha, repo.files["model.safetensors"] = "f" * 40, b"new weights"
    hub.denied.add((REPO, "model.safetensors"))
    code, _, error = _cli(capsys, "download", "1b", "-o", str(out))
    assert code == 2 and f"{out / 'model.safetensors'} has {len(HF_FILES['model.safetensors'])} bytes" in error
    assert "delete it and run the command again" in error


def test_missing_repo_and_revision(hub, tmp_path, capsys):
    code, _, error = _cli(capsys, "download", "nobody/missing", "-o", str(tmp_path / "m"))
    assert code == 2 and "nobody/missing not found" in error
    code, _, error = _cli(capsys, "download", "1b", "-o", str(tmp_path / "m"), "--revision", "no-such-branch")
    assert code == 2 and "revision 'no-such-branch' not found in allenai/Bolmo-1B" in error
    code, _, error = _cli(capsys, "download", "a/b/c", "-o", str(tmp_path / "m"))
    assert code == 2 and "neither 1b, 7b nor a Hub repo id" in error


def test_offline_mode_without_an_earlier_download(hub, tmp_path, capsys, monkeypatch):
    _go_offline(monkeypatch)
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(tmp_path / "off"), "--format", "olmo-core")
    assert code == 2 and "offline mode (HF_HUB_OFFLINE=1)" in error and "allenai/Bolmo-1B" in error
    assert "earlier download" not in stdout  # no claim to use files that are not there
    assert not hub.seen  # nothing was asked of the Hub


def test_offline_mode_reuses_an_earlier_download(hub, tmp_path, capsys, monkeypatch, caplog):
    out = download(REPO, tmp_path / "hf")
    _go_offline(monkeypatch)
    requests_before = len(hub.seen)
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out))
    assert (code, error) == (0, "") and "offline mode" in stdout
    assert len(hub.seen) == requests_before
    # huggingface_hub's own multi-line "Returning existing local_dir" notice is not shown too.
    assert not [r for r in caplog.records if "Returning existing local_dir" in r.getMessage()]
    # A directory with the config but not the weights is no earlier download to report as done.
    weights = sorted(out.glob("model*.safetensors"))
    assert weights
    weights[-1].unlink()
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out))
    assert code == 2 and f"{weights[-1].name} is missing" in error and "Done" not in stdout


def test_offline_mode_checks_the_revision_it_cannot_resolve(hub, tmp_path, capsys, monkeypatch):
    """Offline, an earlier download is reused whatever commit it came from: a commit asked for by
    its hash must be the one recorded; a branch or tag cannot be checked, and the run says so."""
    out = download(REPO, tmp_path / "hf")
    commit = hub.repos[REPO].sha
    _go_offline(monkeypatch)
    for revision in (commit, commit[:10]):
        code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out), "--revision", revision)
        assert (code, error) == (0, "") and "offline mode" in stdout
    other = "0123456789abcdef0123456789abcdef01234567"
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out), "--revision", other)
    assert code == 2 and f"holds commit {commit} of {REPO}, not revision {other}" in error and "Done" not in stdout
    main(["download", "1b", "-o", str(out), "--revision", "v1.0"])
    err = capsys.readouterr().err
    assert f"cannot check that {out} is revision 'v1.0' of {REPO} (it holds commit {commit})" in err


def test_offline_native_layout_without_its_staging_copy(hub, tmp_path, capsys, monkeypatch):
    """The guide lets users delete DIR/.cache once done: offline, the native layout in place is
    the earlier download (it was refused as "not downloaded before")."""
    import shutil

    out = download(REPO, tmp_path / "native", fmt="olmo-core")
    shutil.rmtree(out / ".cache")
    _go_offline(monkeypatch)
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out), "--format", "olmo-core")
    assert (code, error) == (0, "") and "offline mode" in stdout
    (out / "config.json").unlink()  # an incomplete layout is still refused
    code, _, error = _cli(capsys, "download", "1b", "-o", str(out), "--format", "olmo-core")
    assert code == 2 and "config.json" in error


def test_unreachable_endpoint(hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:  # bound, never listening: refused, and no other process can take the port
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", dead)
        code, _, error = _cli(capsys, "download", "1b", "-o", str(tmp_path / "n"))
    assert code == 2 and f"cannot reach {dead} (" in error and "Connection refused" in error
    assert "HF_HUB_OFFLINE=1" in error


def test_layouts_are_never_mixed_in_one_directory(hub, tmp_path):
    out = download(REPO, tmp_path / "mixed")
    with pytest.raises(CheckpointError, match="already holds an HF model"):
        download(REPO, out, fmt="olmo-core")


@pytest.mark.parametrize("identifier", ["subword_tokenizer", "/nonexistent/tokenizer"])
def test_tokenizer_in_a_repo_subfolder_or_local_path(hub, tmp_path, identifier):
    files = _hf_files(identifier)
    if identifier == "subword_tokenizer":
        files |= {f"subword_tokenizer/{name}": b"{}" for name in TOKENIZER_FILES}
    hub.add_repo("someone/own-tokenizer", files)
    out = download("someone/own-tokenizer", tmp_path / "own")
    assert (out / "subword_tokenizer" / "tokenizer.json").is_file() == (identifier == "subword_tokenizer")
    assert not any(TOKENIZER_REPO in s.path for s in hub.seen)


def test_verify_reports_problems_as_an_error(hub, tmp_path, capsys, monkeypatch):
    """The call contract with bolmo.checkpoint.verify, independent of its implementation."""
    stub = types.ModuleType("bolmo.checkpoint.verify")
    problems: list[str] = []
    stub.verify_directory = lambda path: types.SimpleNamespace(problems=list(problems))
    monkeypatch.setitem(sys.modules, "bolmo.checkpoint.verify", stub)
    out = tmp_path / "v"
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out), "--format", "all", "--verify")
    assert (code, error) == (0, "") and "verify: ok" in stdout
    problems.append("__0_3.distcp is 10 bytes, metadata needs 2000")
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(out), "--format", "all", "--verify")
    assert code == 2 and "verification found 2 problem(s)" in error
    assert "problem: __0_3.distcp is 10 bytes" in stdout


def test_verify_with_the_real_checker(hub, tmp_path, capsys):
    pytest.importorskip("bolmo.checkpoint.verify")
    code, stdout, error = _cli(capsys, "download", "1b", "-o", str(tmp_path / "v"), "--format", "all", "--verify")
    assert (code, error) == (0, "") and "verify: ok" in stdout

    shard = "olmo_core/model_and_optim/__0_3.distcp"  # a repo whose upload was cut short
    hub.add_repo("someone/broken", HF_FILES | NATIVE_FILES | {shard: NATIVE_FILES[shard][:1000]})
    code, stdout, error = _cli(capsys, "download", "someone/broken", "-o", str(tmp_path / "b"), "--format",
                               "olmo-core", "--verify")
    assert code == 2 and "verification found 1 problem(s)" in error and "the repo itself is inconsistent" in error
    assert "__0_3.distcp" in stdout


def test_environment_variables_are_honoured(hub, tmp_path):
    """HF_ENDPOINT, HF_HOME and HF_TOKEN in a fresh process, as a user sets them."""
    hub.add_repo("someone/private", HF_FILES | NATIVE_FILES, token="secret")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "home"), "HF_TOKEN": "secret",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    out = tmp_path / "env"
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from bolmo.cli import main; sys.exit(main(sys.argv[1:]))",
         "download", "--model", "someone/private", "--output-dir", str(out), "--format", "olmo-core"],
        env=env, capture_output=True, text=True, timeout=600,  # a hang guard; torch imports slowly on a busy machine
    )
    assert result.returncode == 0, result.stderr
    shard = "model_and_optim/__0_0.distcp"
    assert (out / shard).read_bytes() == NATIVE_FILES[f"olmo_core/{shard}"]


def test_python_api_raises_hub_errors(hub, tmp_path):
    with pytest.raises(HubError, match="nobody/missing not found"):
        download("nobody/missing", tmp_path / "api")
