"""One model load in a fresh process, for the benchmark's memory and concurrency measurements.

    python benchmarks/child.py --tracking-uri URI --registry-uri URI --model-uri models:/m/1
        [--warm-uri URI] [--go-file PATH]   # set up, print "ready", wait for PATH to exist, then load

Prints one JSON line: load seconds, RSS before the load, peak RSS during it, RSS after it (bytes).
The peak is the kernel's high-water mark, reset after the imports (``/proc/self/clear_refs``),
so it covers the load only. Imports and store set-up (resolving the URI once) come before the
clock starts: they are the same for every store and not what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def status(field: str) -> int:
    """A size field of /proc/self/status (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--registry-uri", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--go-file")
    parser.add_argument("--warm-uri", help="a model to load first, as a process that is already serving would have")
    args = parser.parse_args()

    import mlflow
    import mlflow.pyfunc
    import sklearn.ensemble  # noqa: F401  (imported by the load anyway; not part of its cost)

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.registry_uri)
    # resolve the URI once first: store set-up and the first connection are not part of a load
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    ModelsArtifactRepository(args.model_uri)
    if args.warm_uri:
        mlflow.pyfunc.load_model(args.warm_uri)
    if args.go_file:
        print("ready", flush=True)
        while not os.path.exists(args.go_file):
            time.sleep(0.002)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS")
    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(args.model_uri)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_before": before, "rss_peak": status("VmHWM"),
                      "rss_after": status("VmRSS"), "model": type(model).__name__}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
