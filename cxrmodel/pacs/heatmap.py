"""The Grad-CAM overlay of a prediction as a DICOM Secondary Capture image (highdicom), for the
report series in the source study (``CXR_DICOMWEB_HEATMAP=true``).

The overlay shows where the network looked for the finding it scored highest: the image the
network saw (resized, un-normalised) under a jet colour map of the Grad-CAM map. It is burned
into the pixels, so any viewer shows it; the image's description says it is research output,
not a diagnosis. Its UID is derived like the SR's, so sending it again is a no-op.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrmodel.findings import FINDINGS
from cxrmodel.pacs.sr import MANUFACTURER, SR_SERIES_NUMBER, UID_ROOT, ModelIdentity, report_uids


def overlay_rgb(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``uint8 [H, W, 3]``: ``grey`` (``[H, W]`` in 0-1) blended with ``heat`` (0-1) in the jet colour map."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    base = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    return np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8)


def heatmap_uid(sop_instance_uid: str, model: ModelIdentity, threshold_set_id: int) -> str:
    return generate_uid(UID_ROOT, ["cxr-heatmap", sop_instance_uid, model.sha256, str(threshold_set_id)])


def compute_overlay(loaded, image_path: str | Path, probabilities: np.ndarray) -> tuple[np.ndarray, str]:
    """Grad-CAM of the finding with the highest probability on the image at ``image_path``, with
    ``loaded`` (:class:`cxrmodel.models.loading.LoadedModel`, a network), as an RGB overlay."""
    import pandas as pd
    import torch

    from cxrmodel.data.imaging import read_dicom_patient, read_grayscale, resize_square
    from cxrmodel.data.metadata import patient_features
    from cxrmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from cxrmodel.explain.gradcam import grad_cam

    finding = FINDINGS[int(np.argmax(probabilities))]
    pixels = resize_square(read_grayscale(image_path), loaded.image_size)
    image = loaded.input_transform(torch.from_numpy(pixels)[None])
    tags, _ = read_dicom_patient(image_path)
    patient = torch.from_numpy(
        patient_features(pd.DataFrame([{k: tags.get(k) for k in ("age", "sex", "view")}]), loaded.age_scaler)
    )
    heat = grad_cam(loaded.network, image[None], patient, FINDINGS.index(finding))
    grey = image[0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return overlay_rgb(grey, heat), finding


def build_heatmap(source: Dataset, rgb: np.ndarray, finding: str, model: ModelIdentity, threshold_set_id: int) -> Dataset:
    """The Secondary Capture of ``rgb`` in the report series of ``source``'s study."""
    uids = report_uids(source.StudyInstanceUID, source.SOPInstanceUID, model, threshold_set_id)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=heatmap_uid(source.SOPInstanceUID, model, threshold_set_id),
        instance_number=2,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    image.Laterality = ""  # General Series, Type 2C: a chest is not a paired body part (present, empty)
    image.ImageComments = f"Grad-CAM of {finding} by {model.name}: research output, not a diagnosis."[:10240]
    image.DerivationDescription = f"Grad-CAM overlay ({finding}) of the source image; research output, not a diagnosis."
    return image
