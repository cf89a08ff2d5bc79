"""Stage 4, evaluation: multi-label metrics, per-finding thresholds, probability calibration, patient
bootstrap intervals, subgroup metrics, the whole evaluation of a split (``evaluate.evaluate``) and the drift rule.

Nothing is re-exported here: import names from their modules (``from cxrmodel.evaluation.<module>
import name``), so importing one stage does not import the others' dependencies."""
