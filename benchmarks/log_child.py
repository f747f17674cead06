"""One ``log_model(..., registered_model_name=)`` of a big model in a fresh process, for its peak memory.

    python benchmarks/log_child.py --uri URI --name NAME --mib N

Builds the nearest-neighbours model of ``N`` MiB (benchmarks/models.py: the same bytes every time),
then logs and registers it (after a tiny one: imports and set-up are not measured). Prints one JSON line: seconds, the registered version, RSS once the
model is built, and the peak RSS while it is logged (bytes). The peak is the kernel's high-water
mark, reset after the model is built (``/proc/self/clear_refs``), so it covers the logging only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.child import status  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True, help="tracking and registry URI")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--mib", type=int, required=True, help="model size")
    args = parser.parse_args()

    import mlflow

    from benchmarks.models import huge_model, log_model, tiny_model

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_registry_uri(args.uri)
    log_model(tiny_model()[0], "warmup")  # imports and store set-up: not what is measured
    model, _ = huge_model(args.mib)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS")
    start = time.perf_counter()
    version = log_model(model, args.name)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "version": version, "rss_before": before, "rss_peak": status("VmHWM")}),
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
