"""A small in-memory stand-in for the Hugging Face Hub HTTP API, for tests.

It implements what the real ``huggingface_hub`` client uses to create a model repo,
upload a folder, read repo info and download files:

* ``POST /api/repos/create``                               create a repo (409 if it exists)
* ``POST /api/models/{repo}/preupload/{revision}``         every file is uploaded "regular"
* ``POST /api/models/{repo}/commit/{revision}``            NDJSON commit, base64 file contents
* ``GET  /api/models/{repo}[/revision/{revision}]``        model info (sha, siblings)
* ``POST /api/validate-yaml``                              model card check (always valid)
* ``HEAD|GET /{repo}/resolve/{revision}/{path}``           file download, with the headers
  the client relies on (``X-Repo-Commit``, ``ETag``, and ``X-Linked-Etag``/``X-Linked-Size``
  for large binary files, which the real Hub stores in LFS)

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
as the Hub does, so the client raises its usual exceptions. Repos live in memory, each
commit a full snapshot ``{path: bytes}`` identified by a 40-hex sha1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

#: extensions served like LFS files (X-Linked-Etag = sha256 of the content)
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid`` / ``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> snapshot
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    log: list[str] = field(default_factory=list)  # commit shas, oldest first

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class HubState:
    """The server's repos, plus a request log and hooks for tests."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        #: called as hook(method, repo_id, revision, path) when a file is served, before its
        #: response is sent (so a test can move a branch "between" two downloads)
        self.on_resolve: Callable[[str, str, str, str], None] | None = None
        self._counter = 0

    # -- helpers usable from tests -----------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private=private)
            sha = self._new_sha(repo_id, "initial commit")
            repo.commits[sha] = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            repo.refs["main"] = sha
            repo.log.append(sha)
            self.repos[repo_id] = repo
            return repo

    def commit(self, repo_id: str, files: dict[str, bytes | None], branch: str = "main", message: str = "") -> str:
        """Commit ``files`` (``None`` deletes a path) on ``branch``; returns the new commit sha."""
        with self.lock:
            repo = self.repos[repo_id]
            parent = repo.refs[branch]
            snapshot = dict(repo.commits[parent])
            for path, data in files.items():
                if data is None:
                    snapshot.pop(path, None)
                else:
                    snapshot[path] = data
            sha = self._new_sha(repo_id, message, parent)
            repo.commits[sha] = snapshot
            repo.refs[branch] = sha
            repo.log.append(sha)
            return sha

    def tag(self, repo_id: str, name: str, revision: str = "main") -> None:
        with self.lock:
            repo = self.repos[repo_id]
            repo.refs[name] = repo.resolve(revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.resolve(revision)])

    def _new_sha(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\0".join((*parts, str(self._counter))).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # -- plumbing ----------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, head: bool = False, extra=None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head=head)
        return repo

    # -- dispatch ----------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.requests.append((method, path))
        parts = path.strip("/").split("/")
        body = self._body() if method == "POST" else b""
        try:
            if method == "POST" and path == "/api/repos/create":
                return self._create(json.loads(body or b"{}"))
            if method == "POST" and path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                rest = parts[4:]
                if method == "GET" and not rest:
                    return self._info(repo_id, "main")
                if method == "GET" and len(rest) >= 2 and rest[0] == "revision":
                    return self._info(repo_id, unquote("/".join(rest[1:])))
                if method == "POST" and len(rest) >= 2 and rest[0] == "preupload":
                    return self._preupload(repo_id, unquote("/".join(rest[1:])), json.loads(body))
                if method == "POST" and len(rest) >= 2 and rest[0] == "commit":
                    return self._commit(repo_id, unquote("/".join(rest[1:])), body)
            if method in ("HEAD", "GET") and len(parts) >= 5 and parts[2] == "resolve":
                repo_id = "/".join(parts[:2])
                return self._resolve(method, repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
            self._error(404, None, f"no route for {method} {path}", head=method == "HEAD")
        except Exception as err:  # pragma: no cover - a test server bug, surface it
            self._error(500, None, f"{type(err).__name__}: {err}", head=method == "HEAD")

    # -- endpoints ---------------------------------------------------------------------
    def _create(self, payload: dict) -> None:
        name, org = payload.get("name"), payload.get("organization")
        repo_id = f"{org}/{name}" if org else f"user/{name}"
        if payload.get("type", "model") != "model":
            return self._error(400, None, "only model repos are supported by this test server")
        with self.state.lock:
            if repo_id in self.state.repos:  # the Hub's 409 answer also carries the url
                message = "You already created this model repo"
                return self._json(
                    409, {"error": message, "url": f"{self.base}/{repo_id}"}, {"X-Error-Message": message}
                )
            self.state.create_repo(repo_id, private=payload.get("visibility") == "private")
        self._json(200, {"url": f"{self.base}/{repo_id}", "name": repo_id})

    def _resolved(self, repo_id: str, revision: str):
        """``(repo, commit sha)``, or ``(repo, None)`` after answering the 404 error."""
        repo = self._repo(repo_id)
        if repo is None:
            return None, None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, sha

    def _info(self, repo_id: str, revision: str) -> None:
        repo, sha = self._resolved(repo_id, revision)
        if sha is None:
            return
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        self._json(200, {"id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings, "tags": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        repo, sha = self._resolved(repo_id, revision)
        if sha is None:
            return
        snapshot = repo.commits[sha]
        files = []
        for item in payload.get("files", []):
            existing = snapshot.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": files, "commitOid": sha})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in repo.refs:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision} (not a branch)")
        message, changes = "", {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent is not None and parent != repo.refs[revision]:
                    return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, None, f"unsupported encoding {value.get('encoding')!r}")
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                changes[value["path"]] = None
            else:  # lfsFile, deletedFolder...: never requested by this server's preupload answers
                return self._error(400, None, f"unsupported commit operation {key!r}")
        sha = self.state.commit(repo_id, changes, branch=revision, message=message)
        self._json(
            200,
            {"commitUrl": f"{self.base}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None},
        )

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> None:
        head = method == "HEAD"
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        data = repo.commits[sha].get(filename)
        if data is None:
            return self._error(
                404, "EntryNotFound", f"{filename} does not exist on {revision!r}", head=head,
                extra={"X-Repo-Commit": sha},
            )
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Accept-Ranges": "bytes",
        }
        if filename.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        status, payload = 200, data
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and not head:
            start_text, _, end_text = range_header[len("bytes="):].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(data) - 1
            payload = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(payload) - 1}/{len(data)}"
            status = 206
        hook = self.state.on_resolve
        if hook is not None:
            hook(method, repo_id, revision, filename)
        self._send(status, payload, headers, head=head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class HubServer:
    """``with HubServer() as hub: ...`` serves on ``hub.url`` (127.0.0.1, a free port)."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
