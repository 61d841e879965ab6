"""The audit's HTML report: one self-contained file, figures embedded as base64 PNGs.

Written with the standard library (``html.escape``) and matplotlib's Agg
canvas only, and referencing nothing outside the file (no script, font or
style sheet is fetched), so it opens in a browser with no network.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
from ._audit import _decision_text

__all__ = ["render_html"]

_MAX_TRIGGERS = 10
_MAX_TABLE_ROWS = 50

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 70em;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.flagged td { background: #fde2e2; font-weight: bold; }
.verdict { font-size: 1.25em; padding: 0.7em 1em; border-radius: 4px; margin: 1em 0; }
.found { background: #fde2e2; border: 1px solid #d33; } .clean { background: #e3f4e3; border: 1px solid #393; }
.warning { background: #fff4d6; border: 1px solid #e0a800; padding: 0.4em 0.8em; margin: 0.5em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; max-width: 60em; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 0 0.2em; }
.small { font-size: 0.85em; color: #555; }
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig, caption, alt):
    return (f'<figure><img src="{_png(fig)}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _new_figure(width, height, ncols=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False).ravel()
    return fig, axes


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, digits=2):
    return "inf" if value is None else f"{value:.{digits}f}"


def _table(header, rows, flagged=None):
    head = "".join(f'<th class="{"text" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        cls = ' class="flagged"' if flagged and flagged[k] else ""
        cells = "".join(f'<td class="{"text" if i == 0 else ""}">{_e(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_RULE_TEXT = {
    "log-mad": ("Each label's log L1 norm is compared with the other labels' log norms: labels whose norm lies more "
                "than {threshold} robust standard deviations (1.4826 times the MAD of the others' log norms, at "
                "least 0.1) below their median are flagged."),
    "mad": ("As in the paper, labels below the median L1 norm whose anomaly index "
            "<code>|L1 - median| / (1.4826 MAD)</code> exceeds {threshold} are flagged."),
}


# ---------------------------------------------------------------------- figures
def _norms_figure(nc):
    labels = np.asarray(nc["labels"])
    norms = np.asarray(nc["l1_norms"], dtype=float)
    flagged = np.isin(labels, nc["flagged_labels"])
    fully = np.asarray(nc["fully_optimized"], dtype=bool)
    fig, (ax,) = _new_figure(max(5.0, min(14.0, 0.35 * len(labels) + 2)), 3.2)
    x = np.arange(len(labels))
    for keep, color, name in ((fully & flagged, "tab:red", "flagged"), (fully & ~flagged, "tab:blue", "not flagged"),
                              (~fully, "lightgray", "screening only (fast mode)")):
        if keep.any():
            ax.bar(x[keep], norms[keep], color=color, label=name)
    ax.axhline(nc["median_l1_norm"], color="gray", linestyle=":", label=f"median {nc['median_l1_norm']:.1f}")
    bounds = np.asarray([np.nan if v is None else v for v in nc["norm_thresholds"]], dtype=float)
    ax.scatter(x, np.maximum(bounds, 0.0), marker="_", s=300, color="k", zorder=3,
               label="decision threshold of the label")
    if len(labels) <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in labels])
    ax.set_xlabel("label")
    ax.set_ylabel("L1 norm of the mask")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _scores_figure(nc):
    labels = np.asarray(nc["labels"])
    raw = [np.nan if v is None else v for v in nc["decision_scores"]]
    scores = np.asarray(raw, dtype=float)
    threshold = nc["decision_threshold"]
    finite = np.isfinite(scores)
    top = max(np.abs(scores[finite]).max() if finite.any() else 1.0, threshold) * 1.2
    shown = np.where(finite, np.clip(scores, -top, top), top)
    flagged = np.isin(labels, nc["flagged_labels"])
    fig, (ax,) = _new_figure(max(5.0, min(14.0, 0.35 * len(labels) + 2)), 3.2)
    x = np.arange(len(labels))
    for keep, color, name in ((flagged, "tab:red", "flagged"), (~flagged, "tab:blue", "not flagged")):
        if keep.any():
            ax.bar(x[keep], shown[keep], color=color, label=name)
    ax.axhline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
    if len(labels) <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in labels])
    ax.set_xlabel("label")
    ax.set_ylabel(f"decision score ({nc['decision_rule']})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _triggers_figure(nc, triggers):
    from ..plotting import TriggerDisplay

    labels = list(nc["labels"])
    order = [labels[i] for i in np.argsort(np.asarray(nc["l1_norms"], dtype=float), kind="stable")]
    chosen = [v for v in order if v in nc["flagged_labels"]]
    chosen += [v for v in order if v not in chosen][: max(0, _MAX_TRIGGERS - len(chosen))]
    norms = dict(zip(labels, nc["l1_norms"]))
    indices = {k: (np.inf if v is None else v) for k, v in zip(labels, nc["anomaly_indices"])}
    fig, axes = _new_figure(1.6 * len(chosen), 2.1, ncols=len(chosen))
    TriggerDisplay({k: triggers[k] for k in chosen}, norms, indices, nc["flagged_labels"]).plot(ax=axes)
    return fig, chosen


def _strip_figure(strip):
    from ..plotting import EntropyHistogramDisplay

    scores = list(strip["benign_scores"])
    y = [0] * len(scores)
    if strip.get("reversed_trigger"):
        scores += list(strip["reversed_trigger"]["scores"])
        y += [1] * len(strip["reversed_trigger"]["scores"])
    fig, (ax,) = _new_figure(5.5, 3.2)
    EntropyHistogramDisplay.from_predictions(np.asarray(y), np.asarray(scores, dtype=float),
                                             threshold=strip["threshold"], ax=ax)
    if strip.get("reversed_trigger"):
        handles, names = ax.get_legend_handles_labels()
        names = [n.replace("trojaned", f"reversed trigger of label {strip['reversed_trigger']['label']}")
                 .replace("benign", "clean") for n in names]
        ax.legend(handles, names, fontsize=8)
    return fig


def _repair_figures(repair):
    from ..plotting import PruningCurveDisplay

    figs = []
    rows = [("clean accuracy", repair["clean_accuracy_before"], repair["clean_accuracy_after"])]
    rows += [(f"label {t['label']}\nreversed-trigger success", t["before"], t["after"])
             for t in repair["reversed_trigger_success"]]
    fig, (ax,) = _new_figure(1.8 + 1.6 * len(rows), 3.2)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r[1] for r in rows], width=0.4, label="before", color="tab:gray")
    ax.bar(x + 0.2, [100 * r[2] for r in rows], width=0.4, label="after fine-pruning", color="tab:green")
    ax.set_xticks(x)
    ax.set_xticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylabel("rate (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    figs.append(fig)
    curve = repair["pruning_curve"]
    fig, (ax,) = _new_figure(5.5, 3.4)
    PruningCurveDisplay(curve["prune_ratio"], curve["clean_accuracy"], curve.get("attack_success"),
                        chosen_ratio=repair["prune_ratio"], name=f"pruning {repair['layer']!r}").plot(ax=ax)
    if curve.get("attack_success") is not None:
        for line in ax.get_lines():
            if line.get_label() == "attack success":
                line.set_label(f"label {curve['monitored_label']} reversed-trigger success")
        ax.legend(loc="best", fontsize=8)
    figs.append(fig)
    return figs


# ---------------------------------------------------------------------- page
def render_html(report, triggers):
    """The audit report as one self-contained HTML page.

    Parameters
    ----------
    report : dict
        What :func:`~backdoorlearn.audit.audit_model` returns.
    triggers : dict
        Label -> :class:`~backdoorlearn.Trigger`, Neural Cleanse's reversed
        triggers (``NeuralCleanse.reversed_triggers_``).

    Returns
    -------
    page : str
        The HTML page, figures embedded as ``data:image/png;base64`` images.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import NeuralCleanse, SmallCNN
    >>> from backdoorlearn.audit import audit_model, render_html
    >>> X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    >>> report = audit_model(SmallCNN(1, 4), X, np.arange(40) % 4, nc_steps=2, random_state=0)
    >>> nc = NeuralCleanse(steps=2, random_state=0).fit(SmallCNN(1, 4), X, np.arange(40) % 4)
    >>> render_html(report, nc.reversed_triggers_).startswith("<!DOCTYPE html>")
    True
    """
    nc = report["neural_cleanse"]
    model, data = report["model"], report["data"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>backdoorlearn audit: {_e(model.get('path') or model['type'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Backdoor audit of {_e(model.get('path') or model['type'])}</h1>",
    ]
    if report["backdoor_detected"]:
        labels = ", ".join(map(str, report["flagged_labels"]))
        parts.append(f'<div class="verdict found"><b>Backdoor found</b>: Neural Cleanse flags target label'
                     f'{"s" if len(report["flagged_labels"]) > 1 else ""} <b>{_e(labels)}</b> '
                     f"({_e(_decision_text(nc))}).</div>")
    else:
        parts.append(f'<div class="verdict clean"><b>No backdoor found</b>: no label\'s decision score exceeds '
                     f"the threshold ({_e(_decision_text(nc))}).</div>")
    for w in report.get("warnings", []):
        parts.append(f'<div class="warning">Warning: {_e(w)}</div>')

    facts = [
        ("model file", model.get("path") or "(a model object)"),
        ("model SHA-256", model.get("sha256") or "-"),
        ("model kind", model.get("kind") or model["type"]),
        ("architecture", f"{model['arch']} {json.dumps(model.get('arch_kwargs') or {})}" if model.get("arch")
         else model["type"]),
        ("classes", model["n_classes"]),
        ("input shape (C, H, W)", " x ".join(map(str, model["input_shape"]))),
        ("parameters", f"{model['n_parameters']:,}"),
        ("clean data", data.get("path") or "(an array)"),
        ("data SHA-256", data.get("sha256") or "-"),
        ("data kind", data.get("kind") or "array"),
        ("images used", f"{data['n_used']} of {data['n_images']}" + (" (labelled)" if data["labelled"] else "")),
        ("value range", f"[{data['value_range'][0]:.3g}, {data['value_range'][1]:.3g}]"),
        ("model accuracy on the clean data", _pct(report.get("clean_accuracy"))),
    ]
    parts.append("<h2>What was audited</h2>")
    parts.append(_table(("", "value"), facts))

    # Neural Cleanse
    parts.append("<h2>Neural Cleanse</h2>")
    parts.append(
        f"<p>For each of the {len(nc['labels'])} labels, Neural Cleanse (Wang et al., IEEE S&amp;P 2019) finds the "
        "smallest trigger (a mask and a pattern) that sends the clean images of the other labels to that label. "
        "A backdoor's target needs a far smaller mask than the others. "
        + _RULE_TEXT[nc["decision_rule"]].format(threshold=_num(nc["decision_threshold"]))
        + f" Mode {_e(nc['mode'])}, {nc['steps']} steps per label; median L1 norm {_num(nc['median_l1_norm'])}, "
        f"scaled MAD {_num(nc['mad'])}; the paper's anomaly index <code>|L1 - median| / (1.4826 MAD)</code> of the "
        f"smallest norm is {_num(nc['anomaly_index'])}.</p>")
    fig, chosen = _triggers_figure(nc, triggers)
    more = "" if len(chosen) == len(nc["labels"]) else f" ({len(chosen)} smallest norms of {len(nc['labels'])})"
    parts.append(_figure(fig, f"Reversed triggers (mask x pattern){more}; flagged labels in red.",
                         "reversed triggers"))
    parts.append(_figure(_norms_figure(nc), "L1 norm of each label's reversed mask, with the median and each "
                         "label's decision threshold (the norm below which it is flagged); flagged labels in red.",
                         "L1 norms"))
    parts.append(_figure(_scores_figure(nc), "Decision score of each label and the threshold it is compared with.",
                         "decision scores"))
    order = np.argsort(np.asarray(nc["l1_norms"], dtype=float), kind="stable")[:_MAX_TABLE_ROWS]
    flagged_set = set(nc["flagged_labels"])
    rows = [(nc["labels"][i], f"{nc['l1_norms'][i]:.2f}", _num(nc["decision_scores"][i]),
             _num(nc["anomaly_indices"][i]),
             _pct(nc["reversed_attack_success"][i]), "yes" if nc["fully_optimized"][i] else "screening only",
             "yes" if nc["labels"][i] in flagged_set else "") for i in order]
    parts.append(_table(("label", "L1 norm", "decision score", "anomaly index", "reversed-trigger success",
                         "fully optimized",
                         "flagged"), rows, flagged=[r[0] in flagged_set for r in rows]))
    if len(nc["labels"]) > _MAX_TABLE_ROWS:
        parts.append(f'<p class="small">The {_MAX_TABLE_ROWS} smallest norms of {len(nc["labels"])} labels; '
                     "report.json holds all.</p>")
    if nc.get("other_attributes"):
        parts.append("<p>Other decision attributes of <code>NeuralCleanse</code>:</p>")
        parts.append(_table(("attribute", "value"), [(k, v) for k, v in nc["other_attributes"].items()]))

    strip = report.get("strip")
    if strip:
        parts.append("<h2>STRIP calibration</h2>")
        text = (f"<p>STRIP (Gao et al., ACSAC 2019) superimposes {strip['n_perturbations']} clean images on an input "
                "and flags it when the predictions stay certain (low entropy). Calibrated on the "
                f"{strip['n_benign']} clean images at a false rejection rate of "
                f"{100 * strip['false_rejection_rate_target']:g}%: threshold <b>{strip['threshold']:.4f}</b> "
                f"(normalized entropy; {_pct(strip['benign_flagged_rate'])} of the clean images fall below it).")
        if strip.get("reversed_trigger"):
            rt = strip["reversed_trigger"]
            text += (f" Clean images stamped with label {rt['label']}'s reversed trigger: "
                     f"{_pct(rt['flagged_rate'])} of {rt['n']} flagged.")
        parts.append(text + "</p>")
        parts.append(_figure(_strip_figure(strip), "Entropy of the clean images"
                             + (" and of clean images carrying the reversed trigger" if strip.get("reversed_trigger")
                                else "") + ", with the threshold.", "STRIP entropy histogram"))

    repair = report.get("repair")
    if repair:
        parts.append("<h2>Repair: fine-pruning</h2>")
        parts.append(
            f"<p>Fine-Pruning (Liu et al., RAID 2018) pruned {len(repair['pruned_units'])} units "
            f"({100 * repair['prune_ratio']:.1f}%) of <code>{_e(repair['layer'])}</code> and fine-tuned for "
            f"{repair['fine_tune_epochs']} epochs on {repair['n_fit']} clean images; the figures below are measured "
            f"on {repair['n_eval']} other clean images."
            + (f" Repaired weights: <code>{_e(repair['model_file'])}</code>." if repair.get("model_file") else "")
            + "</p>")
        rows = [("clean accuracy", _pct(repair["clean_accuracy_before"]), _pct(repair["clean_accuracy_after"]))]
        rows += [(f"label {t['label']} reversed-trigger success ({t['n']} images)", _pct(t["before"]),
                  _pct(t["after"])) for t in repair["reversed_trigger_success"]]
        parts.append(_table(("", "before", "after"), rows))
        bars, curve = _repair_figures(repair)
        parts.append(_figure(bars, "Clean accuracy and the reversed triggers' attack success, before and after.",
                             "repair"))
        parts.append(_figure(curve, "The pruning steps evaluated: clean accuracy (and the reversed trigger's success) "
                             "against the share of units pruned, before fine-tuning.", "pruning curve"))

    env = report.get("environment", {})
    parts.append("<h2>Run</h2>")
    run = [("command", " ".join(report["command"]) if report.get("command") else "-"),
           ("started", report.get("started")), ("seconds", report.get("seconds"))]
    run += [(k, v) for k, v in env.items()]
    parts.append(_table(("", "value"), run))
    parts.append('<p class="small">Written by backdoorlearn. Every number is in report.json beside this file; the '
                 "reversed masks and patterns are in triggers.npz.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
