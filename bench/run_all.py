"""Run every benchmark script in bench/ and print one table: figure, value, reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "refresh_full_scale.py",
    "train_throughput.py",
    "scoring_throughput.py",
    "api_latency.py",
    "prediction_writes.py",
    "calibration_speed.py",
    "evaluation_speed.py",
    "command_overhead.py",
    "contention.py",
    "demo_run.py",
    "real_data.py",
]


def main() -> int:
    rows = []
    for script in sys.argv[1:] or SCRIPTS:
        print(f"== running bench/{script}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, cwd=HERE.parent)
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH "):
                rows.append(json.loads(line[6:]))
        if proc.returncode != 0:
            rows.append(
                {
                    "figure": f"{script} FAILED (exit {proc.returncode})",
                    "value": None,
                    "unit": "",
                    "reference": proc.stderr[-300:],
                    "ok": False,
                }
            )
    width = max(len(r["figure"]) for r in rows) if rows else 10
    print(f"\n{'figure'.ljust(width)}  {'value':>10}  unit   reference")
    for r in rows:
        value = "—" if r["value"] is None else f"{r['value']:,.4g}" if isinstance(r["value"], float) else str(r["value"])
        mark = {True: "  [ok]", False: "  [MISSED]", None: ""}[r["ok"]]
        print(f"{r['figure'].ljust(width)}  {value:>10}  {r['unit']:<5}  {r['reference']}{mark}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
