"""A local HTTP server that speaks the parts of the Hugging Face Hub API ``snapshot_download`` uses.

Written against huggingface_hub 2.4.0 (``HfApi.repo_info`` / ``resolve_revision``,
``list_repo_tree``, ``get_hf_file_metadata`` and ``http_get``):

- ``GET /api/models/{repo}[/revision/{rev}]``: ``{"id", "sha", "siblings", "gated", "private"}``
- ``GET /api/models/{repo}/tree/{rev}``: every file, ``{"type", "path", "size", "oid", "lfs"}``
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``;
  ``Range: bytes=N-`` gets a 206 (resume)
- errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
  ``GatedRepo``) the way the Hub sends them, which is what ``hf_raise_for_status`` maps.

Gated repos answer metadata calls but refuse files unless ``Authorization: Bearer <token>``
matches the repo's token (the Hub: 401 anonymous, 403 when the account has no access). With
``valid_tokens`` set, any other token gets what the Hub answers an invalid one: 401 with
``X-Error-Message: Invalid credentials in Authorization header``, on every route.
Point huggingface_hub at it with ``HF_ENDPOINT=hub.url``. Binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    token: str | None = None  # the token that may read a gated repo

    def resolve(self, rev: str) -> str | None:
        if rev == self.commit:
            return rev
        return {"main": self.commit, **self.branches}.get(rev)


def repo_from_dir(directory: Path, **kwargs: object) -> FakeRepo:
    files = {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    return FakeRepo(files=files, **kwargs)  # type: ignore[arg-type]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.url = ""
        self.valid_tokens: set[str] | None = None  # None: accept any token

    def add(self, repo_id: str, repo: FakeRepo) -> FakeRepo:
        self.repos[repo_id] = repo
        return repo

    def file_gets(self) -> list[str]:
        """Paths of the files actually transferred (GET on /resolve/)."""
        return [
            r.path.split("/resolve/", 1)[1].split("/", 1)[1]
            for r in self.requests
            if r.method == "GET" and "/resolve/" in r.path
        ]


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        # -- plumbing
        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            *,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, data: object, headers: dict[str, str] | None = None) -> None:
            self._send(
                200,
                json.dumps(data).encode(),
                {"Content-Type": "application/json", **(headers or {})},
            )

        def _error(
            self, status: int, code: str, message: str, extra: dict[str, str] | None = None
        ) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(
                status,
                body,
                {
                    "Content-Type": "application/json",
                    "X-Error-Code": code,
                    "X-Error-Message": message,
                    **(extra or {}),
                },
            )

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        # -- routes
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def _route(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Request(self.command, self.path, headers))
            token = headers.get("authorization", "").removeprefix("Bearer ")
            if hub.valid_tokens is not None and token and token not in hub.valid_tokens:
                return self._send(
                    401,
                    json.dumps({"error": "Invalid credentials in Authorization header"}).encode(),
                    {"X-Error-Message": "Invalid credentials in Authorization header"},
                )
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/api/models/"):
                return self._api(path.removeprefix("/api/models/"))
            if "/resolve/" in path:
                return self._resolve(path.lstrip("/"))
            self._error(404, "NotFound", "Not found")

        def _api(self, rest: str) -> None:
            parts = rest.split("/")
            repo_id = "/".join(parts[:2])
            repo = self._repo(repo_id)
            if repo is None:
                return
            kind = parts[2] if len(parts) > 2 else "revision"
            rev = "/".join(parts[3:]) if len(parts) > 3 else "main"
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if kind == "revision":
                return self._json(
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit,
                        "private": False,
                        "gated": "manual" if repo.gated else False,
                        "disabled": False,
                        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                    }
                )
            if kind == "tree":
                entries = []
                for name, data in sorted(repo.files.items()):
                    entry: dict[str, object] = {
                        "type": "file",
                        "oid": _git_blob_oid(data),
                        "size": len(data),
                        "path": name,
                    }
                    if name.endswith(LFS_SUFFIXES):
                        entry["lfs"] = {
                            "oid": hashlib.sha256(data).hexdigest(),
                            "size": len(data),
                            "pointerSize": 134,
                        }
                    entries.append(entry)
                return self._json(entries)
            self._error(404, "NotFound", "Not found")

        def _resolve(self, path: str) -> None:
            repo_part, _, rest = path.partition("/resolve/")
            repo = self._repo(repo_part)
            if repo is None:
                return
            rev, _, filename = rest.partition("/")
            commit = repo.resolve(rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if repo.gated:
                auth = self.headers.get("Authorization", "")
                if not auth:
                    return self._error(
                        401, "GatedRepo", "Access to model is restricted. Please log in."
                    )
                if auth != f"Bearer {repo.token}":
                    return self._error(
                        403,
                        "GatedRepo",
                        "Access to model is restricted and you are not in the authorized list.",
                    )
            data = repo.files.get(filename)
            if data is None:
                return self._error(
                    404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit}
                )
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start = 0
            ranged = self.headers.get("Range", "")
            if self.command == "GET" and ranged.startswith("bytes="):
                start = int(ranged.removeprefix("bytes=").split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[start:], headers)
            self._send(200, data if self.command == "GET" else b"", headers, length=len(data))

    return Handler


@contextmanager
def serve_hub() -> Iterator[FakeHub]:
    """A running fake Hub on 127.0.0.1; stopped (and its thread joined) on exit."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
    )
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
