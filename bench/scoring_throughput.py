"""Scoring throughput from 1024x1024 PNG files to rows in SQLite, against a bare ``model(x)``
loop over the same batches already decoded to tensors (same batch size and input size).

The ratio is the figure: 1.0 means decoding, features, thresholds and database writes cost
nothing next to the network. Issue 6 asks for >= 0.8 on 2 CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

N_IMAGES = 192
BATCH = 32
SIZE = 64


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from cxrmodel.findings import FINDINGS
    from cxrmodel.inference import ScoringDataset, ScoringItem, score_batches
    from cxrmodel.model import densenet121_fpn
    from cxrmodel.synth.phantom import render_phantom, sample_anatomy
    from cxrmodel.transforms import eval_transform
    from db import repository as repo
    from db.engine import session_scope, upgrade_database

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-score-"))
    rng = np.random.default_rng(0)
    base = render_phantom(frozenset(), sample_anatomy(rng), rng, size=1024)
    paths = []
    for i in range(N_IMAGES):
        noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        path = work / f"{i:08d}_000.png"
        Image.fromarray(noisy).save(path)
        paths.append(path)

    url = f"sqlite:///{work / 'bench.db'}"
    upgrade_database(url)
    with session_scope(url) as s:
        repo.sync_studies(s, [{"study_key": p.name, "patient_id": str(i), "age": 50.0, "sex": "M", "view": "PA", "source": "bench",
                               "split": "incoming", "image_path": str(p), "labelled": False} for i, p in enumerate(paths)])
        version = repo.register_model_version(s, name="bench", kind="densenet121_fpn", config={}, artifact_path="-", sha256="0" * 64)
        tset = repo.save_threshold_set(s, version.id, "fixed", {}, {f: 0.5 for f in FINDINGS}, {})
        studies = repo.studies_to_score(s, version.id)
        items = [ScoringItem(st.id, st.image_path, (0.5, 0.0, 0.0)) for st in studies]
        vid, tid = version.id, tset.id

    torch.manual_seed(0)
    model = densenet121_fpn().eval()
    device = torch.device("cpu")
    transform = eval_transform(SIZE)

    # Reference: the bare model over pre-decoded tensors, same batches.
    decoded = ScoringDataset(items, SIZE, transform)
    tensors = torch.stack([decoded[i][0] for i in range(len(items))])
    patient = torch.tensor([[0.5, 0.0, 0.0]] * len(items))
    with torch.no_grad():
        model(tensors[:BATCH], patient[:BATCH])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(items), BATCH):
            model(tensors[start : start + BATCH], patient[start : start + BATCH])
        bare = len(items) / (time.perf_counter() - t0)

    def end_to_end(workers: int) -> float:
        t0 = time.perf_counter()
        for batch in score_batches(model, ScoringDataset(items, SIZE, transform), BATCH, device, num_workers=workers):
            rows = [{"study_id": sid, "model_version_id": vid, "finding": f, "probability": float(p), "decision": bool(p >= 0.5),
                     "threshold_set_id": tid, "scoring_run_id": None}
                    for sid, probs in zip(batch.study_ids, batch.probabilities) for f, p in zip(FINDINGS, probs)]
            with session_scope(url) as s:
                repo.write_predictions(s, rows)
        return len(items) / (time.perf_counter() - t0)

    e2e0 = end_to_end(0)
    e2e1 = end_to_end(1)
    emit(f"scoring: bare model(x), {SIZE}px, batch {BATCH}", round(bare, 1), "img/s", "reference")
    emit("scoring: PNG 1024px -> DB, 0 loader workers", round(e2e0, 1), "img/s", f"ratio {e2e0 / bare:.2f} of bare (target >= 0.8)", e2e0 / bare >= 0.8)
    emit("scoring: PNG 1024px -> DB, 1 loader worker", round(e2e1, 1), "img/s", f"ratio {e2e1 / bare:.2f} of bare (target >= 0.8)", e2e1 / bare >= 0.8)


if __name__ == "__main__":
    main()
