"""Parameter descriptions shared by many estimators, written once.

A docstring decorated with :func:`fill_doc` may hold a line made of one
placeholder, ``{name}`` for a key of :data:`SHARED`; the line is replaced by
that text, indented as the placeholder was. Only whole-line placeholders with
a known name are touched, so braces elsewhere (``{"cpu", "cuda"}``, dict
literals in examples) and ``%`` signs need no escaping.
"""

import re

SHARED = {
    "random_state": """\
random_state : int, RandomState instance or None, default=None
    Makes a run repeatable. Seeds local numpy and torch generators only;
    the global ones are left as they were.""",
    "device": """\
device : str, torch.device or None, default=None
    Where the tensor work runs: ``None`` is the model's own device (a
    skorch net's ``device``; the CPU for a model that has none), ``"auto"``
    is CUDA when available, else a device such as ``"cpu"`` or
    ``"cuda:1"``. The user's model is never moved: the work runs on a
    copy.""",
    "batch_size": """\
batch_size : int, default=256
    Inputs per forward pass of evaluation: it bounds memory, not the
    result.""",
    "train_batch_size": """\
train_batch_size : int, default=16
    Mini-batch size of the fine-tuning: it changes the result (unlike
    ``batch_size``). Small, because the defender's data are a few hundred
    images and each epoch should still take many gradient steps.""",
    "triggers": """\
triggers : Trigger, list of Trigger, dict or fitted NeuralCleanse
    The (reversed) triggers. A fitted
    :class:`~backdoorlearn.NeuralCleanse` contributes the reversed triggers
    of its flagged labels (``reversed_triggers_[label]`` for each label in
    ``flagged_labels_``) with those labels as targets; a dict maps target
    labels (integers in ``[0, n_classes)``, checked at fit) to triggers. ``sklearn.clone`` of the repair hands over an
    unfitted copy of a ``NeuralCleanse``: pass the dict
    ``{k: nc.reversed_triggers_[k] for k in nc.flagged_labels_}`` to clone
    it.""",
    "validation_fraction": """\
validation_fraction : float in [0, 0.5], default=0.2
    Share of each class of ``X`` held out to check the fine-tuning's
    learning rate before the fine-tuning proper: a fine-tuned model fits
    the few hundred images it trained on, so only images it did not see
    show what it lost. The model is fine-tuned on the rest at ``lr``, then
    at ``lr / 3`` and ``lr / 10``, until one keeps the held-out accuracy of
    the model before the repair (a loss counts where it exceeds the
    accuracy budget and McNemar's test on the paired answers, two-sided
    5%); the repaired model is then fine-tuned on all of ``X`` at that
    rate, so where ``lr`` passes it is the model without the check. Where
    every rate loses, the best is kept and the repair warns. ``0`` skips
    the check. It costs one to three extra fine-tunings.""",
    "fine_tune_recipe": """\
lr_schedule : {"cosine", "constant"}, default="cosine"
    ``"cosine"`` anneals the learning rate from ``lr`` to 0 over the
    epochs: the large early steps move the weights off the backdoor, the
    small late ones settle clean accuracy.
label_smoothing : float in [0, 1), default=0.1
    Label smoothing of the fine-tuning's cross-entropy, a standard
    regularizer against over-fitting a few hundred images.
max_shift : int, default=1
    Data augmentation of the fine-tuning: each image not drawn for noise
    (see ``noise_prob``) is translated by up to ``max_shift`` pixels each
    way (zero fill), drawn anew per image and batch, which stretches the
    defender's few images. ``0`` leaves those images as they are.
noise_std : float, default=0.3
    Standard deviation of the Gaussian noise added to the images drawn
    for noise (inputs scaled to [0, 1]; ``0`` disables it). A patch
    trigger sits where clean images are blank, so clean data give no
    gradient to the weights that read it, and when the backdoor lives in
    the channels clean data keep active neither pruning nor clean
    fine-tuning changes them. Noise excites those inputs with the true
    labels attached, so fine-tuning overwrites the trigger's weights;
    training with input noise is also a classical regularizer (Bishop,
    1995).
noise_prob : float in [0, 1], default=0.5
    Probability that an image is given noise rather than a shift: half
    keeps most images close to the clean distribution.
weight_decay : float, default=0.2
    AdamW's decoupled weight decay during fine-tuning. Clean data give no
    gradient to weights only the trigger uses, so decay erodes them, the
    weight-level analogue of pruning dormant neurons.""",
    "lr_search": """\
lr_ : float
    The learning rate of the fine-tuning (see ``validation_fraction``).
lr_search_ : Bunch or None
    The learning-rate check: ``lr`` (the rates tried, in order),
    ``validation_accuracy`` (accuracy on the held-out images of each
    trial), ``reference_accuracy`` (the model before the repair on the
    same images), ``n_validation`` and ``passed`` (whether the rate kept
    lost nothing); ``None`` when the check was skipped.""",
    "repair_checks": """\
accuracy_repaired_ : float
    Clean accuracy on ``X`` of the repaired model.
repair_ok_ : bool
    False when the repaired model failed the checks of every repair: its
    weights hold NaN or infinity (the fine-tuning diverged), it lost more
    clean accuracy on ``X`` than the budget, or the learning-rate check
    found no rate that kept the accuracy of held-out images (a
    :class:`~backdoorlearn.RepairWarning` said so at fit).
repair_problems_ : list of str
    What failed the checks (empty when ``repair_ok_``).""",
    "verbose": """\
verbose : int, default=0
    0 is silent; 1 shows tqdm progress for the long loops.""",
    "n_jobs": """\
n_jobs : int, default=None
    Parallel jobs through joblib (``None`` is 1 unless inside a
    ``joblib.parallel_config`` context, ``-1`` is all cores).""",
    "detector_convention": """\
Detectors follow scikit-learn's outlier detectors for scores and PyOD
for labels: ``score_samples`` is higher for more benign inputs,
``decision_function = score_samples - threshold_`` is negative for
flagged inputs, and ``predict`` returns **1 for a flagged (trojaned)
input and 0 for an accepted one**, so scikit-learn metrics and scorers
(``"recall"``, ``"f1"``) treat "trojaned" as the positive class.""",
}

_NO_TRIGGER = """\
    What to do when ``triggers`` is a fitted NeuralCleanse that flagged no
    label (the model looked clean to it): ``"fine-prune"`` repairs with
    :class:`~backdoorlearn.FinePruner` instead, the repair that needs no
    trigger (with this repair's ``batch_size``, ``device`` and, where it
    has one, ``random_state``; it is kept in ``fallback_``), with a warning;
    ``"warn"`` returns an unchanged copy of the model with a warning
    (``n_triggers_ = 0``), for a user who repairs only what the inspection
    found; ``"raise"`` is a ``ValueError``."""

#: ``no_trigger`` of Unlearner, whose default falls back to FinePruner.
SHARED["no_trigger"] = """\
no_trigger : {"fine-prune", "warn", "raise"}, default="fine-prune"
""" + _NO_TRIGGER + """ The default is ``"fine-prune"``
    because Neural Cleanse misses some backdoors (source-specific ones
    above all) that FinePruner removes, and fine-pruning a model that was
    clean costs it little accuracy (the user guide's repair page gives the
    development figures)."""

#: ``no_trigger`` of NeuronPruner, which has no ``random_state`` for a fallback's fine-tuning.
SHARED["no_trigger_warn"] = """\
no_trigger : {"warn", "fine-prune", "raise"}, default="warn"
""" + _NO_TRIGGER + """ ``"warn"`` is the default here: this
    repair has no ``random_state``, and the fallback's fine-tuning would
    make its result vary from run to run."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>" + "|".join(SHARED) + r")\}[ \t]*$",
                          re.MULTILINE)


def _substitute(match):
    indent = match.group("indent")
    return "\n".join(indent + line if line else line for line in SHARED[match.group("name")].splitlines())


def fill_doc(obj):
    """Replace the whole-line ``{name}`` placeholders in ``obj.__doc__`` by :data:`SHARED` text.

    Parameters
    ----------
    obj : class or function
        Decorated object; its docstring is rewritten in place.

    Returns
    -------
    obj : class or function
        The same object.
    """
    if obj.__doc__:
        obj.__doc__ = _PLACEHOLDER.sub(_substitute, obj.__doc__)
    return obj
