"""Accuracy as an ``evaluate`` metric module, shipped so ``evaluate.load`` works offline.

``evaluate.load("accuracy")`` fetches its script from the Hugging Face Hub; loading this file
by path needs no network. It follows the Hub metric's interface (predictions, references,
optional normalize and sample_weight) with numpy instead of scikit-learn.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): return the fraction (default) or the count of correct predictions.
    sample_weight (list of float): optional per-sample weights.
Returns:
    accuracy (float): the fraction (or weighted count) correct.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Fraction of exact matches between predictions and references."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        matches = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(matches)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        score = float((matches * weights).sum())
        return {"accuracy": score / weights.sum() if normalize else score}
