"""Cold start of a package: each repeat is a fresh Python process that imports the
light runtime, runs Predictor.load (hash check included) and one first prediction.
Prints the median and every sample, in-process times and whole-process wall time.

    .venv/bin/python scripts/package_cold_start.py runs/quickstart/05-package --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from compress.runtime import Predictor
t1 = time.perf_counter()
p = Predictor.load(sys.argv[1])
t2 = time.perf_counter()
p.predict(["a gripping, beautifully acted film that never lets up"])
t3 = time.perf_counter()
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
                  "heavy_modules": heavy}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, args.package], capture_output=True, text=True, check=True)
        sample = json.loads(out.stdout)
        sample["process_wall_s"] = time.perf_counter() - start
        samples.append(sample)
    keys = ["import_s", "load_s", "first_predict_s", "total_s", "process_wall_s"]
    median = {k: round(statistics.median(s[k] for s in samples), 3) for k in keys}
    stats = [os.stat(os.path.join(d, f)) for d, _, fs in os.walk(args.package) for f in fs]
    unique = {(st.st_dev, st.st_ino): st.st_size for st in stats}  # the Triton copy is a hard link
    print(json.dumps({"median": median, "package_bytes": sum(unique.values()),
                      "package_bytes_counting_links_twice": sum(st.st_size for st in stats),
                      "load_avg": os.getloadavg(),
                      "heavy_modules": samples[0]["heavy_modules"],
                      "samples": [{k: round(s[k], 3) for k in keys} for s in samples]}, indent=2))


if __name__ == "__main__":
    main()
