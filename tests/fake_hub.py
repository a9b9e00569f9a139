"""A Hugging Face Hub stand-in on 127.0.0.1 for download tests.

It serves only what huggingface_hub (0.34 to 2.x) asks for when downloading:
- `GET /api/models/{repo}[/revision/{rev}]`: repo info (`sha`, `siblings` with sizes);
- `GET /api/models/{repo}/tree/{rev}?recursive=true`: the file listing 2.x downloads from;
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: file metadata (`X-Repo-Commit`, `ETag`, `Content-Length`,
  `X-Linked-Etag`/`X-Linked-Size` for LFS files) and content, with `Range` requests answered by 206.
Errors carry the `X-Error-Code` header that the library turns into its typed exceptions. No Xet
headers are ever sent, so downloads stay on plain HTTP. Every request is recorded for assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_LFS_SUFFIXES = (".safetensors", ".distcp", ".bin")
_INVALID_TOKEN = "Invalid credentials in Authorization header"


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str
    token: str | None = None  # private: API and files need "Bearer <token>"
    gated: bool = False  # with a token: info is public, files need the token

    def is_lfs(self, path: str) -> bool:
        return path.endswith(_LFS_SUFFIXES) or path.rsplit("/", 1)[-1] == ".metadata"

    def etag(self, path: str) -> str:
        data = self.files[path]
        if self.is_lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git blob id


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    # (repo, path) -> [GETs still to cut short, bytes to send before hanging up]
    drops: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    denied: set[tuple[str, str]] = field(default_factory=set)  # files answered with 403

    def add_repo(self, repo_id: str, files: dict[str, bytes], token: str | None = None,
                 gated: bool = False) -> FakeRepo:
        sha = hashlib.sha1(repo_id.encode()).hexdigest()
        repo = FakeRepo(files=dict(files), sha=sha, token=token, gated=gated)
        self.repos[repo_id] = repo
        return repo

    def drop_connection(self, repo_id: str, path: str, after_bytes: int, times: int = 1) -> None:
        """Hang up after `after_bytes` of the body on the next `times` GETs of this file."""
        self.drops[(repo_id, path)] = [times, after_bytes]

    def gets(self, repo_id: str, path: str) -> list[Seen]:
        suffix = f"/{repo_id}/resolve/"
        return [s for s in self.seen if s.method == "GET" and s.path.startswith(suffix)
                and unquote(s.path).endswith("/" + path)]

    def __enter__(self) -> "FakeHub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = urlsplit(self.path).path
            hub.seen.append(Seen(self.command, path, dict(self.headers.items())))
            if match := _TREE.match(path):
                self._tree(unquote(match["repo"]), unquote(match["rev"]), body)
            elif match := _API.match(path):
                self._repo_info(unquote(match["repo"]), unquote(match["rev"] or "main"), body)
            elif match := _RESOLVE.match(path):
                self._file(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]), body)
            else:
                self._error(404, "RepoNotFound", "Not found", body)

        def _authorized(self, repo: FakeRepo, for_files: bool, body: bool) -> bool:
            """Mimic the Hub: private repos look missing (401 RepoNotFound) without a token,
            a wrong token is rejected outright, gated repos refuse only their files."""
            if repo.token is None or (repo.gated and not for_files):
                return True
            auth = self.headers.get("Authorization")
            if auth == f"Bearer {repo.token}":
                return True
            if repo.gated:
                code = 401 if auth is None else 403
                self._error(code, "GatedRepo", "Access to this model is restricted", body)
            elif auth is None:
                self._error(401, "RepoNotFound", "Repository not found", body)
            else:
                self._error(401, None, _INVALID_TOKEN, body)
            return False

        def _lookup(self, repo_id: str, rev: str, body: bool) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", body)
                return None
            if rev not in ("main", repo.sha):
                self._error(404, "RevisionNotFound", "Invalid rev id", body)
                return None
            return repo

        def _repo_info(self, repo_id: str, rev: str, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is not None and not self._authorized(repo, for_files=False, body=body):
                return
            if (repo := self._lookup(repo_id, rev, body)) is None:
                return
            siblings = []
            for name, data in sorted(repo.files.items()):
                entry: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": repo.etag(name)}
                if repo.is_lfs(name):
                    entry["lfs"] = {"size": len(data), "sha256": repo.etag(name), "pointerSize": 134}
                siblings.append(entry)
            self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": repo.token is not None,
                        "gated": "auto" if repo.gated else False, "siblings": siblings}, body)

        def _tree(self, repo_id: str, rev: str, body: bool) -> None:
            """The recursive listing: every folder, then every file with its blob id and LFS data."""
            repo = hub.repos.get(repo_id)
            if repo is not None and not self._authorized(repo, for_files=False, body=body):
                return
            if (repo := self._lookup(repo_id, rev, body)) is None:
                return
            folders = sorted({name.rsplit("/", 1)[0] for name in repo.files if "/" in name})
            folders = sorted({"/".join(f.split("/")[:i]) for f in folders for i in range(1, f.count("/") + 2)})
            entries: list[dict[str, object]] = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f}
                                                for f in folders]
            for name, data in sorted(repo.files.items()):
                entry: dict[str, object] = {"type": "file", "oid": repo.etag(name), "size": len(data), "path": name}
                if repo.is_lfs(name):
                    entry["lfs"] = {"oid": repo.etag(name), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._json(entries, body)

        def _json(self, value: object, body: bool) -> None:
            payload = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _file(self, repo_id: str, rev: str, name: str, body: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is not None and not self._authorized(repo, for_files=True, body=body):
                return
            if (repo := self._lookup(repo_id, rev, body)) is None:
                return
            if (repo_id, name) in hub.denied:
                self._error(403, None, "Forbidden", body)
                return
            if name not in repo.files:
                self._error(404, "EntryNotFound", "Entry not found", body, commit=repo.sha)
                return
            data = repo.files[name]
            start = 0
            if body and (wanted := re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))):
                start = int(wanted[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{repo.etag(name)}"')
            self.send_header("Accept-Ranges", "bytes")
            if repo.is_lfs(name):
                self.send_header("X-Linked-Etag", f'"{repo.etag(name)}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            drop = hub.drops.get((repo_id, name))
            if drop and drop[0] > 0:
                drop[0] -= 1
                self.wfile.write(data[start:start + drop[1]])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a short body
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def _error(self, status: int, code: str | None, message: str, body: bool, commit: str | None = None) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code is not None:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler
