"""Stage 1, data: NIH metadata and incoming sidecars, patient-level splits, balancing, image decoding and
the resized image cache, transforms, datasets, the Hugging Face source and the synthetic phantoms.

Public names are re-exported here and imported on first use (``lazy_loader``), so importing
one stage does not import the others' dependencies."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules={
        "synth",
        "archives",
        "balancing",
        "cache",
        "datasets",
        "hub",
        "imaging",
        "incoming",
        "labelled",
        "metadata",
        "records",
        "sidecar",
        "splits",
        "transforms",
    },
    submod_attrs={
        "archives": ["UnsafeArchiveError", "plan_members", "safe_extract"],
        "balancing": ["BalancingResult", "preset_steps", "label_counts", "apply_step", "apply_balancing"],
        "cache": ["ImageCache", "cached_loader"],
        "datasets": ["StudyDataset", "array_loader"],
        "hub": [
            "DATA_ENTRY_FILES",
            "DEFAULT_ARCHIVE_PATTERN",
            "DEFAULT_METADATA_FILES",
            "MARKER_NAME",
            "HubFileNotFoundError",
            "HubSource",
            "fetch_archives",
            "fetch_dataset",
            "fetch_metadata",
            "hub_offline",
        ],
        "imaging": [
            "ImageDecodeError",
            "is_plain_file_name",
            "safe_join",
            "file_sha256",
            "read_grayscale",
            "parse_patient_age",
            "read_dicom_metadata",
            "resize_square",
        ],
        "incoming": ["INCOMING", "INCOMING_SUFFIXES", "incoming_files", "read_incoming_folder"],
        "labelled": ["METADATA_NAMES", "find_metadata_file", "read_labelled_dataset"],
        "metadata": [
            "QuarantineRecord",
            "MetadataResult",
            "expand_header",
            "read_nih_metadata",
            "locate_images",
            "AgeScaler",
            "patient_features",
            "labels_matrix",
        ],
        "records": ["STUDY_FIELDS", "StudyBatch", "study_record"],
        "sidecar": ["SidecarRow", "parse_sidecar_row", "read_sidecar"],
        "splits": ["read_official_lists", "stratification_labels", "assign_splits", "assert_no_patient_leak", "patient_folds"],
        "transforms": ["grey_to_rgb", "train_transform", "light_train_transform", "augmentation_transform", "eval_transform"],
    },
)
