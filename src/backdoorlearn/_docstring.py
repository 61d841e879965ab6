"""Parameter descriptions shared by many estimators, written once.

Use ``@fill_doc`` on a class or function whose docstring holds placeholders
such as ``%(random_state)s`` on a line indented like a parameter (4 spaces in
a class docstring).
"""

_SHARED = {
    "random_state": """random_state : int, RandomState instance or None, default=None
        Makes a run repeatable. Seeds local numpy and torch generators only;
        the global ones are left as they were.""",
    "device": """device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the tensor work runs. ``"auto"`` picks CUDA when available. The
        user's model is never moved: the defense works on a copy.""",
    "batch_size": """batch_size : int, default=256
        Inputs per forward pass (bounds memory, not the result).""",
    "verbose": """verbose : int, default=0
        0 is silent; 1 shows tqdm progress for the long loops.""",
    "n_jobs": """n_jobs : int, default=None
        Parallel jobs through joblib (``None`` is 1 unless inside a
        ``joblib.parallel_config`` context, ``-1`` is all cores).""",
    "detector_convention": """Detectors follow scikit-learn's outlier detectors for scores and PyOD
    for labels: ``score_samples`` is higher for more benign inputs,
    ``decision_function = score_samples - threshold_`` is negative for
    flagged inputs, and ``predict`` returns **1 for a flagged (trojaned)
    input and 0 for an accepted one**, so scikit-learn metrics and scorers
    (``"recall"``, ``"f1"``) treat "trojaned" as the positive class.""",
}


def fill_doc(obj):
    """Substitute the shared ``%(name)s`` placeholders in ``obj.__doc__``."""
    if obj.__doc__:
        obj.__doc__ = obj.__doc__ % _SHARED
    return obj
