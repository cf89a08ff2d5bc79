"""Run every benchmark script in bench/ and print one table: figure, value, reference.

With ``--record``, each script's figures are also kept in ``docs/figures/<script>.json`` and the
generated blocks of README and docs are rewritten from them (``bench/doc_blocks.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
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
    "pacs_roundtrip.py",
]


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--record"]
    keep = "--record" in sys.argv[1:]
    rows = []
    for script in args or SCRIPTS:
        print(f"== running bench/{script}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, cwd=HERE.parent)
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH "):
                rows.append(json.loads(line[6:]))
        if keep and proc.returncode == 0:
            from bench import doc_blocks

            doc_blocks.record(Path(script).stem, proc.stdout, f"python bench/{script}")
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
    if keep:
        from bench import doc_blocks

        doc_blocks.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
