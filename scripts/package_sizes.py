"""A package directory's size three ways, as JSON on stdout: on disk (hard links counted
once: the Triton repository's model.onnx is a link to the package's), as a copy that does
not keep hard links, and as `tar -czf` writes it (tarfile with gzip keeps hard links as links,
as GNU tar does); and every file's size.

    python scripts/package_sizes.py runs/quickstart/05-package > benchmarks/results/package/sizes.json"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path


def sizes(package: Path) -> dict:
    files = sorted(p for p in package.rglob("*") if p.is_file())
    stats = {p: p.stat() for p in files}
    unique = {(st.st_dev, st.st_ino): st.st_size for st in stats.values()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:  # gzip's default level, as tar -z
        tar.add(package, arcname=package.name)
    return {"package_bytes": sum(unique.values()),
            "package_bytes_counting_links_twice": sum(st.st_size for st in stats.values()),
            "tar_gz_bytes": len(buffer.getvalue()),
            "files": {str(p.relative_to(package)): st.st_size for p, st in stats.items()}}


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from compress.environment import environment

    result = sizes(Path(argv[0]))
    env = environment()
    result["command"] = "python scripts/package_sizes.py " + argv[0]
    result["git_commit"] = env["git_commit"]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
