"""A stand-in for the Hugging Face Hub: the real one cannot be reached from the test machines.

It serves the parts of the Hub's HTTP API that `huggingface_hub` (and so the controller) uses,
as measured against the real client: model info by revision, the recursive file tree with LFS
sha256 digests, and `resolve` downloads with HEAD metadata (X-Repo-Commit, ETag,
Content-Length) and Range requests (206). Repositories are folders: ROOT/<org>/<repo>/<files>
(links are followed, so the suite serves the real SmolLM2 files without copying them).

    python -m tests.standins.hub --port P --root DIR [--rate BYTES_PER_S] [--token T]
        [--private org/repo] [--gated org/repo] [--wrong-sha org/repo]

--private: only a request with `Authorization: Bearer T` sees the repo (others get 401, as the
Hub answers for a private repo); --gated: 403 GatedRepo; --wrong-sha: the tree lists a wrong
sha256 for every LFS file (an integrity failure). Each request is printed on stdout, one line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

CHUNK = 1 << 20
LFS_MIN = 1 << 20  # files this large (and every .gguf / .safetensors) are LFS files


class Hub:
    def __init__(self, root: Path, rate: float, token: str | None, private: set[str], gated: set[str], wrong: set[str]):
        self.root, self.rate, self.token = root, rate, token
        self.private, self.gated, self.wrong = private, gated, wrong
        self._digests: dict[tuple[str, int, int], tuple[str, str]] = {}

    # -------------------------------------------------------------------------------- repos

    def repo(self, request: web.Request) -> tuple[str, Path]:
        name = f"{request.match_info['org']}/{request.match_info['repo']}"
        folder = self.root / name
        if ".." in name or not folder.is_dir():
            raise _error(404, "RepoNotFound", "Repository not found")
        if name in self.private and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise _error(401, "RepoNotFound", "Repository not found")
        if name in self.gated:
            raise _error(403, "GatedRepo", f"Access to model {name} is restricted")
        return name, folder

    @staticmethod
    def commit(name: str) -> str:
        return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()

    def files(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    def digests(self, path: Path) -> tuple[str, str]:
        """(sha256, git blob sha1) of a file, cached per version."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            sha256, blob = hashlib.sha256(), hashlib.sha1(usedforsecurity=False)
            blob.update(b"blob %d\0" % stat.st_size)
            with path.open("rb") as f:
                while block := f.read(8 * CHUNK):
                    sha256.update(block)
                    blob.update(block)
            self._digests[key] = (sha256.hexdigest(), blob.hexdigest())
        return self._digests[key]

    def is_lfs(self, path: Path) -> bool:
        return path.suffix in (".gguf", ".safetensors") or path.stat().st_size >= LFS_MIN

    def entry(self, name: str, folder: Path, path: Path) -> dict[str, Any]:
        sha256, blob = self.digests(path)
        size = path.stat().st_size
        entry: dict[str, Any] = {"type": "file", "oid": blob, "size": size, "path": path.relative_to(folder).as_posix()}
        if self.is_lfs(path):
            lie = hashlib.sha256(b"not this file").hexdigest()
            entry["lfs"] = {"oid": lie if name in self.wrong else sha256, "size": size, "pointerSize": 134}
        return entry

    # ------------------------------------------------------------------------------- routes

    async def info(self, request: web.Request) -> web.Response:
        name, folder = self.repo(request)
        self.revision(request, name)
        siblings = [{"rfilename": p.relative_to(folder).as_posix()} for p in self.files(folder)]
        body = {"id": name, "modelId": name, "sha": self.commit(name), "private": name in self.private}
        return web.json_response({**body, "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

    async def tree(self, request: web.Request) -> web.Response:
        name, folder = self.repo(request)
        self.revision(request, name)
        base = folder / request.match_info.get("path", "")
        entries = await asyncio.to_thread(lambda: [self.entry(name, folder, p) for p in self.files(base)])
        return web.json_response(entries)

    def revision(self, request: web.Request, name: str) -> None:
        if request.match_info.get("rev", "main") not in ("main", self.commit(name)):
            raise _error(404, "RevisionNotFound", "Invalid rev id")

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        name, folder = self.repo(request)
        self.revision(request, name)
        path = folder / request.match_info["path"]
        if ".." in request.match_info["path"] or not path.is_file():
            raise _error(404, "EntryNotFound", "Entry not found")
        sha256, blob = await asyncio.to_thread(self.digests, path)
        size = path.stat().st_size
        etag = sha256 if self.is_lfs(path) else blob
        headers = {
            "X-Repo-Commit": self.commit(name),
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.is_lfs(path):
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)}
        start, status = 0, 200
        wanted = request.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        headers["Content-Length"] = str(size - start)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        chunk = CHUNK if not self.rate else max(1024, int(self.rate / 20))
        with path.open("rb") as f:
            f.seek(start)
            while block := f.read(chunk):
                await response.write(block)
                if self.rate:
                    await asyncio.sleep(len(block) / self.rate)
        await response.write_eof()
        return response


def _error(status: int, code: str, message: str) -> web.HTTPException:
    kind = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return kind(
        headers={"X-Error-Code": code, "X-Error-Message": message},
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


@web.middleware
async def log_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    print(request.method, request.path_qs, f"range={request.headers.get('Range', '')}", flush=True)
    response: web.StreamResponse = await handler(request)
    return response


def build(hub: Hub) -> web.Application:
    app = web.Application(middlewares=[log_requests])
    repo = "/api/models/{org}/{repo}"
    app.router.add_get(repo, hub.info)
    app.router.add_get(repo + "/revision/{rev}", hub.info)
    app.router.add_get(repo + "/tree/{rev}", hub.tree)
    app.router.add_get(repo + "/tree/{rev}/{path:.+}", hub.tree)
    app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{path:.+}", hub.resolve)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=0, help="bytes per second per download (0: as fast as it can)")
    parser.add_argument("--token")
    parser.add_argument("--private", action="append", default=[])
    parser.add_argument("--gated", action="append", default=[])
    parser.add_argument("--wrong-sha", action="append", default=[])
    args = parser.parse_args()
    hub = Hub(args.root, args.rate, args.token, set(args.private), set(args.gated), set(args.wrong_sha))
    web.run_app(build(hub), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
