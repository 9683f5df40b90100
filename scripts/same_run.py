"""Record a short SmolLM2 run, or check that two recordings are bit-identical.

    python scripts/same_run.py record DIR     # 3 steps of configs/smollm2-135m-cpu.yaml, synchronous and async
    python scripts/same_run.py compare A B    # exit 0 when every metric and the final weights match bit for bit

A recording is `DIR/<mode>/fingerprint.json`: every logged metric except wall-clock times, and the SHA-256 of
the final weights. Run `record` before and after a change that must not change behaviour, then `compare`.
The async mode samples in an actor process of its own (`async_generation`) at `lagged_generation`, which fixes
the policy version of each batch whatever the timing; the free-running actor's versions depend on timing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/smollm2-135m-cpu.yaml"
MODES = {
    "sync": [],
    "async": ["async_generation=true", "max_staleness=1", "lagged_generation=true"],
}
TIMING = ("time_", "tokens_per_s")


def fingerprint(run: Path) -> dict:
    """The run's metrics without wall-clock fields, and the final weights' SHA-256."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]
    weights = hashlib.sha256((run / "final" / "model.safetensors").read_bytes()).hexdigest()
    return {"metrics": metrics, "weights_sha256": weights}


def record(out: Path) -> None:
    for mode, overrides in MODES.items():
        run = out / mode / "run"
        sets = [a for kv in ["max_steps=3", f"output_dir={run}", *overrides] for a in ("--set", kv)]
        subprocess.run([sys.executable, "-m", "agro.cli", "train", CONFIG, *sets], check=True)
        (out / mode / "fingerprint.json").write_text(json.dumps(fingerprint(run), indent=1) + "\n")
        print(f"{mode}: {out / mode / 'fingerprint.json'}")


def compare(a: Path, b: Path) -> int:
    differ = 0
    for mode in MODES:
        fa, fb = (json.loads((d / mode / "fingerprint.json").read_text()) for d in (a, b))
        same = fa == fb
        differ += not same
        print(f"{mode}: {'bit-identical' if same else 'DIFFERENT'} ({len(fa['metrics'])} metric rows, weights "
              f"{fa['weights_sha256'][:12]} vs {fb['weights_sha256'][:12]})")
        if not same:
            for i, (ra, rb) in enumerate(zip(fa["metrics"], fb["metrics"])):
                keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
                if keys:
                    print(f"  row {i}: {', '.join(f'{k}: {ra.get(k)} vs {rb.get(k)}' for k in keys[:6])}")
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
