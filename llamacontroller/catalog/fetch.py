"""One file from the Hub into a `.part` file: resumed with a Range request, hashed as it is
written, and accepted only when its size and digest match what the Hub listed.

Blocking (it runs in a worker thread); `cancelled` is checked between chunks. The part file stays
after a failure or a cancel so that the next attempt resumes; a digest mismatch deletes it.
"""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from llamacontroller.catalog.hub import RemoteFile
from llamacontroller.errors import InsufficientStorage, LlamaControllerError, UpstreamError

CHUNK = 1 << 20
MAX_ATTEMPTS = 5  # a connection dropped mid-file is resumed where it stopped


class Cancelled(Exception):
    pass


class IntegrityError(LlamaControllerError):
    status = 502
    code = "integrity_error"


def _hasher(remote: RemoteFile) -> Any:
    if remote.sha256:
        return hashlib.sha256()
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % remote.size)  # git's blob id
    return digest


def fetch(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    remote: RemoteFile,
    part: Path,
    progress: Callable[[int], None],
    cancelled: threading.Event,
) -> None:
    """Download `url` into `part` until it holds `remote.size` bytes with the listed digest."""
    part.parent.mkdir(parents=True, exist_ok=True)
    digest = _hasher(remote)
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    with part.open("ab") as out:
        if have:
            with part.open("rb") as done:  # the bytes from an earlier attempt count towards the digest
                while block := done.read(8 * CHUNK):
                    digest.update(block)
            progress(have)
        attempts = 0
        while have < remote.size:
            if cancelled.is_set():
                raise Cancelled
            try:
                have = _receive(client, url, headers, have, remote.size, out, digest, progress, cancelled)
            except httpx.TransportError as exc:
                attempts += 1
                if attempts >= MAX_ATTEMPTS:
                    raise UpstreamError(f"download of {remote.path} keeps failing: {exc}") from None
                out.flush()
                have = out.tell()  # what arrived before the connection dropped is kept
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise InsufficientStorage(f"the disk filled up while writing {remote.path}") from None
                raise
            if have == -1:  # the server ignored Range: start over
                progress(-out.tell())
                out.truncate(0)
                digest, have = _hasher(remote), 0
    expected = remote.sha256 or remote.git_oid
    if expected and digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise IntegrityError(
            f"{remote.path}: {'sha256' if remote.sha256 else 'git oid'} mismatch "
            f"(expected {expected}, got {digest.hexdigest()}); the file was discarded"
        )


def _receive(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    have: int,
    size: int,
    out: Any,
    digest: Any,
    progress: Callable[[int], None],
    cancelled: threading.Event,
) -> int:
    ranged = {**headers, "Range": f"bytes={have}-"} if have else headers
    with client.stream("GET", url, headers=ranged) as response:
        if response.status_code in (401, 403, 404):
            raise UpstreamError(f"the Hub answered {response.status_code} for {url.rsplit('/', 1)[-1]}")
        if response.status_code == 416 and have >= size:
            return have
        if response.status_code not in (200, 206):
            raise UpstreamError(f"the Hub answered {response.status_code} for {url.rsplit('/', 1)[-1]}")
        if have and response.status_code == 200:
            return -1
        for chunk in response.iter_raw(CHUNK):
            if cancelled.is_set():
                raise Cancelled
            if have + len(chunk) > size:
                raise UpstreamError(f"the Hub sent more than the {size} bytes it listed")
            out.write(chunk)
            digest.update(chunk)
            have += len(chunk)
            progress(len(chunk))
        out.flush()
    return have
