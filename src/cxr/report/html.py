"""The report as one self-contained HTML document: inline CSS, base64 PNGs, no script."""

from __future__ import annotations

import base64
import math
import os
from pathlib import Path

from cxr.bootstrap import Interval
from cxr.report.analysis import OPERATING_POINTS, RATES


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not estimable"
    return f"{value:.{digits}f}"


def _ci(interval: dict | Interval | None, digits: int = 3) -> str:
    if isinstance(interval, Interval):
        interval = interval.as_dict()
    if not interval or interval.get("estimate") is None:
        return "not estimable"
    text = f"{interval['estimate']:.{digits}f}"
    if interval.get("low") is not None:
        text += f" ({interval['low']:.{digits}f}&ndash;{interval['high']:.{digits}f})"
    return text


def _data_uri(path_or_bytes) -> str:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def render_html(report: dict, figures: dict, gallery: list[dict]) -> str:
    """The report as one HTML document: inline CSS, base64 PNGs, no script, nothing external."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = _fmt
    env.filters["ci"] = lambda x, d=3: Markup(_ci(x, d))  # numbers only: safe
    env.filters["basename"] = lambda key: os.path.basename(str(key))
    env.filters["pct"] = lambda x: "not estimable" if x is None else f"{100 * x:.1f}%"
    images = {name: _data_uri(path) for name, path in figures.items()}
    for entry in gallery:
        entry["uri"] = _data_uri(entry["png"])
    return env.from_string(_TEMPLATE).render(
        r=report,
        res=report["results"],
        images=images,
        gallery=gallery,
        op_names=OPERATING_POINTS,
        rate_names={
            "sensitivity": "sensitivity",
            "specificity": "specificity",
            "ppv": "PPV",
            "npv": "NPV",
            "f1": "F1",
        },
        rates=RATES,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ r.title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;
margin-top:2em}h3{margin-bottom:.3em}
.notice{background:#fff3cd;border:1px solid #e0b84c;padding:10px 14px;border-radius:6px;
font-weight:600}
.warn{background:#fdecea;border:1px solid #e3a39c;padding:8px 14px;border-radius:6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #d5dbe3;padding:4px 8px;text-align:right;vertical-align:top;
white-space:nowrap}.wide{overflow-x:auto}.meta td{white-space:normal}
th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
.ne{color:#8a94a3;font-style:italic}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #e3e7ec}
figcaption{font-size:.85em;color:#4a5568}
.meta td{text-align:left}.small{font-size:.85em;color:#4a5568}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{width:200px;font-size:.8em}
.card img{width:200px;border:1px solid #ccd}
nav a{margin-right:12px}
</style></head>
<body><main>
{% if r.leakage and r.leakage.warning %}<p class="warn" id="leakage"><strong>{{ r.leakage.warning
}}</strong></p>{% endif %}
{% if r.get('pretraining_warning') %}<p class="warn" id="pretraining"><strong>
Pretrained on this data? {{ r.pretraining_warning }}</strong></p>{% endif %}
<p class="notice" id="notice">{{ r.notice }}</p>
<h1>{{ r.title }}</h1>
<div class="wide"><table class="meta">
<tr><th>model</th><td>{{ r.model.run_dir }} ({{ r.model.task }}, {{ r.model.findings|length }}
 findings)</td></tr>
<tr><th>evaluation data</th><td>{{ r.data.path }} (split: {{ r.data.split }})</td></tr>
<tr><th>images / patients</th><td>{{ res.n_images }} / {{ res.n_patients }}</td></tr>
<tr><th>validation (operating points, temperature)</th><td>{{ res.validation.n_images }} images /
 {{ res.validation.n_patients }} patients</td></tr>
<tr><th>mean AUROC</th><td>{{ res.mean_auroc|num }}</td></tr>
<tr><th>created</th><td>{{ r.created }}, cxr {{ r.cxr_version }}</td></tr>
</table></div>
<nav><a href="#summary">Summary</a><a href="#operating">Operating points</a>
<a href="#curves">Curves</a><a href="#calibration">Calibration</a><a href="#subgroups">Subgroups</a>
<a href="#tta">TTA</a><a href="#gallery">Gallery</a><a href="#model-card">Model card</a>
<a href="#methods">Methods</a></nav>
{% if r.warnings %}<div class="warn" id="warnings"><strong>Warnings</strong><ul>
{% for w in r.warnings %}<li>{{ w }}</li>{% endfor %}</ul></div>{% endif %}
{% if r.data.skipped %}<p class="warn">{{ r.data.skipped|length }} unreadable image(s) were
 skipped, e.g. {{ r.data.skipped[0].file }}.</p>{% endif %}

<h2 id="summary">Summary per finding</h2>
<p class="small">95% intervals from {{ r.method.bootstrap.n_boot }} bootstrap resamples of
 patients. "not estimable": no positives or no negatives among the labelled images.</p>
<div class="wide"><table><tr><th>finding</th><th>positives</th><th>negatives</th><th>prevalence</th>
<th>AUROC (95% CI)</th><th>AUPRC (95% CI)</th><th>ECE before</th><th>ECE after</th></tr>
{% for name, f in res.findings.items() %}<tr><td>{{ name }}</td><td>{{ f.n_positive }}</td>
<td>{{ f.n_negative }}</td><td>{{ f.prevalence|pct }}</td><td>{{ f.auroc|ci }}</td>
<td>{{ f.auprc|ci }}</td><td>{{ f.ece_before|num }}</td><td>{{ f.ece_after|num }}</td></tr>
{% endfor %}</table></div>

{% if r.adaptation %}{% set a = r.adaptation %}
<h2 id="adaptation">Site adaptation (cxr adapt): before and after, on these images</h2>
<p class="small">{{ a.adapted_run }} is {{ a.source_run }} adjusted to the prevalence estimated
 from {{ a.n_unlabelled }} unlabelled images ({{ a.method }}; thresholds: {{ a.thresholds }}).
 AUROC cannot change (a monotone shift per finding); calibration and the calls can.</p>
<div class="wide"><table><tr><th></th><th>NLL</th><th>ECE</th><th>accuracy</th>
<th>mean AUROC</th></tr>
{% for name in ("before", "after") %}<tr><td>{{ name }}</td><td>{{ a[name].nll|num }}</td>
<td>{{ a[name].ece|num }}</td><td>{{ a[name].accuracy|num }}</td>
<td>{{ a[name].mean_auroc|num }}</td></tr>{% endfor %}</table></div>
<div class="wide"><table><tr><th>finding</th><th>prevalence: validation</th><th>estimated</th>
<th>observed</th><th>mean probability before / after</th><th>threshold before / after</th>
<th>sensitivity before / after</th><th>specificity before / after</th></tr>
{% for name, f in a.findings.items() %}<tr><td>{{ name }}</td>
<td>{{ f.prevalence_validation|pct }}</td><td>{{ f.prevalence_estimated|pct }}</td>
<td>{{ f.prevalence_observed|pct }}</td>
<td>{{ f.mean_probability_before|num }} / {{ f.mean_probability_after|num }}</td>
<td>{{ f.before.threshold|num }} / {{ f.after.threshold|num }}</td>
<td>{{ f.before.sensitivity|num }} / {{ f.after.sensitivity|num }}</td>
<td>{{ f.before.specificity|num }} / {{ f.after.specificity|num }}</td></tr>
{% endfor %}</table></div>{% endif %}

<h2 id="operating">Operating points (chosen on validation, applied here)</h2>
{% for m, label in op_names.items() %}<h3>{{ label }}</h3>
<div class="wide"><table><tr><th>finding</th><th>threshold</th>
{% for k in rates %}<th>{{ rate_names[k] }}</th>{% endfor %}
<th>TP</th><th>FP</th><th>TN</th><th>FN</th></tr>
{% for name, f in res.findings.items() %}{% set p = f.operating_points[m] %}<tr><td>{{ name }}</td>
<td>{{ p.threshold|num }}{% if not p.threshold_from_validation %}
 <span class="ne">(fallback)</span>{% endif %}</td>
{% for k in rates %}<td>{{ p[k]|ci }}</td>{% endfor %}
<td>{{ p.confusion.tp }}</td><td>{{ p.confusion.fp }}</td><td>{{ p.confusion.tn }}</td>
<td>{{ p.confusion.fn }}</td></tr>{% endfor %}</table></div>{% endfor %}

<h2 id="curves">ROC and precision-recall curves, confusion matrices</h2>
<figure><img alt="ROC curves with operating points" src="{{ images.roc }}">
<figcaption>ROC curves; markers: the operating points chosen on validation.</figcaption></figure>
<figure><img alt="Precision-recall curves" src="{{ images.pr }}">
<figcaption>Precision-recall curves; dotted line: prevalence (a classifier without skill).
</figcaption></figure>
<figure><img alt="Confusion matrices" src="{{ images.confusion }}">
<figcaption>Confusion matrices at the Youden thresholds.</figcaption></figure>

<h2 id="calibration">Calibration</h2>
<p>Temperature T = {{ r.method.calibration.temperature|num }} ({{ r.method.calibration.origin }};
 {{ r.method.calibration.validation_n_images }} validation images; validation NLL
 {{ r.method.calibration.validation_nll_before|num }} &rarr;
 {{ r.method.calibration.validation_nll_after|num }}, ECE
 {{ r.method.calibration.validation_ece_before|num }} &rarr;
 {{ r.method.calibration.validation_ece_after|num }}).
 On the evaluated images, ECE ({{ res.calibration.ece_kind }}) is
 <strong>{{ res.calibration.ece_before|num }}</strong> before and
 <strong>{{ res.calibration.ece_after|num }}</strong> after temperature scaling.
 T &gt; 1 means the raw model was over-confident.</p>
<figure><img alt="Reliability diagrams" src="{{ images.reliability }}"><figcaption>Reliability
 diagrams before and after temperature scaling (15 equal-width bins).</figcaption></figure>

<h2 id="subgroups">Subgroups</h2>
{% if r.subgroups %}<p class="small">AUROC per finding within each subgroup, with counts, so you
 can see where the model is weaker. Small subgroups have wide intervals.</p>
{% if images.get("subgroups") %}<figure><img alt="AUROC by subgroup" src="{{ images.subgroups }}">
</figure>{% endif %}
{% for key, g in r.subgroups.items() %}<h3>{{ g.label }}</h3>
<div class="wide"><table><tr><th>finding</th>
{% for level, e in g.levels.items() %}<th>{{ level }}<br>
<span class="small">{{ e.n_images }} img</span></th>{% endfor %}</tr>
{% for name in res.findings %}<tr><td>{{ name }}</td>{% for level, e in g.levels.items() %}
{% set f = e.findings[name] %}<td>{{ f.auroc|ci }}<br><span class="small">{{ f.n_positive }}
 pos / {{ f.n_negative }} neg</span></td>{% endfor %}</tr>{% endfor %}</table></div>{% endfor %}
{% else %}<p>The evaluation data has no sex, age or view-position metadata: no subgroup analysis.
</p>{% endif %}

<h2 id="tta">Test-time augmentation</h2>
{% if r.tta %}<p>Views: {{ r.tta.views|join(", ") }}; {{ r.tta.combine }}. The difference is
 paired (same resamples).</p>
<div class="wide"><table><tr><th>finding</th><th>AUROC</th><th>AUROC with TTA</th>
<th>difference (95% CI)</th></tr>
{% for name, t in r.tta.findings.items() %}<tr><td>{{ name }}</td><td>{{ t.plain|ci }}</td>
<td>{{ t.tta|ci }}</td><td>{{ t.delta|ci }}</td></tr>{% endfor %}</table></div>
{% else %}<p>Not requested (pass <code>--tta</code>).</p>{% endif %}

<h2 id="gallery">Gallery: most confident true and false positives</h2>
<p class="small">{{ r.gallery.note }}</p>
{% for name, entries in gallery|groupby("finding") %}<h3>{{ name }}</h3>
<div class="gallery">{% for e in entries %}<div class="card">
<img alt="{{ e.finding }} {{ e.kind }}" src="{{ e.uri }}"><br><strong>{{ e.kind }}</strong>,
 p = {{ e.probability|num }}<br><span class="small">{{ e.key|basename }}</span></div>
{% endfor %}</div>{% endfor %}

<h2 id="model-card">Model card</h2>
{% set mc = r.model_card %}
<div class="wide"><table class="meta">
<tr><th>intended use</th><td>{{ mc.intended_use }}</td></tr>
<tr><th>out of scope</th><td>{{ mc.out_of_scope }}</td></tr>
<tr><th>training data</th><td>{{ mc.training_data.path }} ({{ mc.training_data.source }}):
 {{ mc.training_data.n_train }} training and {{ mc.training_data.n_val }} validation images,
 {{ mc.training_data.task }}, split {{ mc.training_data.split }}.<br>Findings:
 {{ mc.training_data.findings|join(", ") }}</td></tr>
<tr><th>label quality</th><td>{{ mc.label_quality }}</td></tr>
<tr><th>model</th><td>{{ mc.model.arch }}, {{ mc.model.image_size }} px input, pretrained:
 {{ mc.model.pretrained }}, best epoch {{ mc.model.best_epoch }}</td></tr>
<tr><th>preprocessing</th><td>{% for k, v in mc.preprocessing.items() %}{{ k }} = {{ v }}{% if
 not loop.last %}; {% endif %}{% endfor %}</td></tr>
<tr><th>metrics</th><td>mean AUROC {{ res.mean_auroc|num }} on {{ res.n_images }} images of
 {{ mc.evaluation_data }}; per finding above, with intervals.</td></tr>
<tr><th>known limitations</th><td><ul>{% for x in mc.limitations %}<li>{{ x }}</li>{% endfor %}
</ul></td></tr>
<tr><th>regulatory status</th><td><strong>{{ mc.not_a_medical_device }}</strong></td></tr>
</table></div>
{% if images.get("training") %}<figure><img alt="Training curves" src="{{ images.training }}">
<figcaption>Training curves of the run.</figcaption></figure>{% endif %}

<h2 id="methods">Methods</h2>
<ul>
<li>Intervals: {{ r.method.bootstrap.n_boot }} {{ r.method.bootstrap.unit }}-level bootstrap
 resamples (all images of a drawn patient enter together), {{ r.method.bootstrap.interval }}
 95% intervals, seed {{ r.method.bootstrap.seed }}. Resamples without both classes are left out
 of a finding's interval.</li>
<li>Operating points: thresholds chosen on the run's validation split only, never on the data
 evaluated here. Scale: {{ r.method.thresholds_scale }}. "(fallback)": validation had no
 positives or no negatives for that finding, so no threshold could be chosen and 0.5 is used.</li>
<li>Calibration: {{ res.calibration.ece_kind }}; one temperature for all outputs, fitted by
 minimising the validation negative log-likelihood.</li>
</ul>
<p class="notice">{{ r.notice }}</p>
</main></body></html>
"""
