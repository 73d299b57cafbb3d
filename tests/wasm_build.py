"""Build the test Wasm filter from its AssemblyScript sources with npm, once per source version.

The sources (tests/wasm/add_header) use the proxy-wasm AssemblyScript SDK; both come from the
npm registry. The built module is kept under .venv/wasm-cache keyed by a digest of the
sources, so only the first run (or a change) pays for `npm install` and the compile.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SOURCES = Path(__file__).parent / "wasm" / "add_header"
CACHE = Path(__file__).parents[1] / ".venv" / "wasm-cache"


def build_add_header() -> Path:
    digest = hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(SOURCES.rglob("*")) if p.is_file())
    ).hexdigest()[:16]
    module = CACHE / f"add_header-{digest}.wasm"
    if module.exists():
        return module
    if shutil.which("npm") is None:
        raise RuntimeError("npm is needed to build the test Wasm filter (Node.js from Debian)")
    work = CACHE / f"build-{digest}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(SOURCES, work)
    npm = ["npm", "install", "--no-audit", "--no-fund", "--silent"]
    subprocess.run(npm, cwd=work, check=True, timeout=600, capture_output=True)
    subprocess.run(
        ["npx", "asc", "assembly/index.ts", "-b", str(module), "--use", "abort=abort_proc_exit",
         "-O3"],
        cwd=work, check=True, timeout=600, capture_output=True,
    )
    shutil.rmtree(work, ignore_errors=True)
    return module
