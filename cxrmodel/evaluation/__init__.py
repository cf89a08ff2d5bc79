"""Stage 4, evaluation: multi-label metrics, per-finding thresholds, probability calibration, patient
bootstrap intervals, subgroup metrics, the whole evaluation of a split (``evaluate.evaluate``) and the drift rule.

Public names are re-exported here and imported on first use (``lazy_loader``), so importing
one stage does not import the others' dependencies."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules={
        "bootstrap",
        "calibration",
        "crossval",
        "drift",
        "evaluate",
        "metrics",
        "subgroups",
        "thresholds",
    },
    submod_attrs={
        "bootstrap": ["BootstrapResult", "bootstrap_ci", "bootstrap_counts", "weighted_auroc"],
        "calibration": [
            "CALIBRATION_METHODS",
            "ProbabilityCalibrator",
            "calibration_summary",
            "expected_calibration_error",
            "reliability_curve",
        ],
        "crossval": ["CrossValidationResult", "cross_validate", "paired_difference", "supported_macro_auroc"],
        "drift": ["DRIFT_MIN_COUNT", "DRIFT_RATIO", "DriftStatus", "drift_status"],
        # 'evaluate' the function is imported from its module (the name is the submodule's here)
        "evaluate": ["ARRAYS_FILE", "ModelEvaluation", "SplitPredictions", "arrays_path", "predict_split", "save_arrays"],
        "metrics": [
            "EvaluationResult",
            "apply_thresholds",
            "epoch_summary",
            "evaluate_multilabel",
            "pr_curves",
            "roc_curves",
            "validate_multilabel",
        ],
        "subgroups": ["AGE_BANDS", "SUBGROUP_KEYS", "UNKNOWN", "age_band", "subgroup_gaps", "subgroup_metrics"],
        "thresholds": [
            "DEFAULT_THRESHOLD",
            "ThresholdResult",
            "calibrate_thresholds",
            "dynamic_f1_thresholds",
            "fixed_sensitivity_thresholds",
            "load_thresholds_json",
            "precision_constrained_f1_thresholds",
            "save_thresholds_json",
            "threshold_grid",
            "youden_thresholds",
        ],
    },
)
