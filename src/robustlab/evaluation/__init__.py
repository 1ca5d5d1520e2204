"""Evaluation: clean accuracy, robustness curves, transfer matrix, per-sample records, sanity flags."""

from robustlab.evaluation.accuracy import (
    clean_metrics,
    confusion_matrix,
    metrics_from_predictions,
    predict_logits,
    require_eval_mode,
)
from robustlab.evaluation.adversarials import (
    AdversarialSet,
    load_png,
    quantise,
    save_adversarials,
)
from robustlab.evaluation.outputs import OutputRequest, write_examples, write_robustness_outputs
from robustlab.evaluation.records import (
    RECORD_FIELDS,
    EvaluatedImages,
    min_eps_from_grid,
    records_summary,
    sample_records,
    write_records_csv,
)
from robustlab.evaluation.robustness import (
    CurveRequest,
    CurvesResult,
    Outcome,
    ScoreRequest,
    check_compatible,
    check_epsilons,
    noise_attack_for,
    robustness_curves,
    score_perturbations,
)
from robustlab.evaluation.sanity import (
    Flag,
    SanityFlags,
    curve_flags,
    gradient_flags,
    output_flags,
    sanity_flags,
    unbounded_attack_flags,
)
from robustlab.evaluation.transfer import (
    TransferMatrix,
    TransferRequest,
    transfer_flags,
    transfer_matrix,
)

__all__ = [
    "RECORD_FIELDS",
    "AdversarialSet",
    "CurveRequest",
    "CurvesResult",
    "EvaluatedImages",
    "Flag",
    "Outcome",
    "OutputRequest",
    "SanityFlags",
    "ScoreRequest",
    "TransferMatrix",
    "TransferRequest",
    "check_compatible",
    "check_epsilons",
    "clean_metrics",
    "confusion_matrix",
    "curve_flags",
    "gradient_flags",
    "load_png",
    "metrics_from_predictions",
    "min_eps_from_grid",
    "noise_attack_for",
    "output_flags",
    "predict_logits",
    "quantise",
    "records_summary",
    "require_eval_mode",
    "robustness_curves",
    "sample_records",
    "sanity_flags",
    "save_adversarials",
    "score_perturbations",
    "transfer_flags",
    "transfer_matrix",
    "unbounded_attack_flags",
    "write_examples",
    "write_records_csv",
    "write_robustness_outputs",
]
