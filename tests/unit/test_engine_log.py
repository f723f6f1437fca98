"""The engine log file: every line kept, timestamped, rotated at its size limit."""

from __future__ import annotations

import re
from pathlib import Path

from llamacontroller.supervisor.logs import EngineLog, RotatingFile


def test_lines_are_timestamped_and_rotated(tmp_path: Path) -> None:
    path = tmp_path / "model.log"
    log = RotatingFile(path, max_bytes=200, backups=2)
    for i in range(20):
        log.write(1_700_000_000.25 + i, f"line {i:02d} " + "x" * 20)
    log.close()
    current = path.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,250 line 19 x{20}", current[-1])
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["model.log", "model.log.1", "model.log.2"]  # older ones dropped
    assert all(f.stat().st_size <= 200 for f in files)
    kept = [line for f in reversed(files) for line in f.read_text().splitlines()]
    numbers = [int(line.split()[3]) for line in kept]
    assert numbers == list(range(numbers[0], 20))  # consecutive: nothing lost inside the kept window


def test_engine_log_appends_to_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "m.log"
    first = EngineLog("m", path)
    first.append("before restart")
    first.close()
    second = EngineLog("m", path)
    second.append("after restart")
    second.close()
    assert [line.split(" ", 2)[2] for line in path.read_text().splitlines()] == ["before restart", "after restart"]
    assert [line.text for line in second.tail(5)] == ["after restart"]
