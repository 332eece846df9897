"""Write one benchmark's section of benchmarks/RESULTS.md (shared by the benchmark scripts)."""
from __future__ import annotations

import os
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, text: str, *, results: Path = RESULTS) -> None:
    """Replace (or append) the part of ``results`` from the heading line ``section`` to the next ``## `` heading
    with ``text``, atomically (temp file + rename); the other sections are kept as they are."""
    current = results.read_text() if results.is_file() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = text.rstrip("\n") + "\n\n"
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else \
        current.rstrip("\n") + "\n\n" + block
    tmp = results.with_name(f".{results.name}.{os.getpid()}.tmp")
    tmp.write_text(updated.rstrip("\n") + "\n")
    os.replace(tmp, results)
