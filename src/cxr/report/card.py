"""The words of the report: the model card (what was trained on what, for what use) and the
limitations a reader must know, written from the measured numbers.
"""

from __future__ import annotations

from cxr import NOT_A_MEDICAL_DEVICE
from cxr.config import DataConfig
from cxr.errors import CxrError
from cxr.run import LoadedRun

SUBGROUP_NOTES_MAX = 6  # weaker-subgroup lines in the model card's limitations


def source_kind(cfg_data) -> str:
    from cxr.data import detect_format

    if cfg_data.format != "auto":
        return cfg_data.format
    try:
        return detect_format(cfg_data.path)
    except CxrError:
        return "unknown"


def label_quality(kind: str, path: str, uncertain: str) -> str:
    text = {
        "nih": "NIH ChestX-ray14: labels text-mined from the radiology reports by NLP (Wang et "
        "al., CVPR 2017), estimated about 90% accurate and noisier for some findings; 'No "
        "Finding' images can carry unlabelled disease.",
        "chexpert": "CheXpert: labels extracted from reports by the CheXpert labeler; uncertain "
        f"(-1) labels were handled as '{uncertain}'.",
        "medmnist": "MedMNIST: a downsampled public release; labels as in its source data set.",
        "synthetic": "Synthetic phantoms, not patients: the labels are exact by construction and "
        "the figures say nothing about real radiographs.",
        "folder": "Labels from the class-folder names.",
    }.get(kind, "Label source unknown.")
    if kind == "folder" and "chest_xray" in path:
        text += (
            " For the Kermany et al. (Cell 2018) pneumonia set: graded by expert physicians; "
            "paediatric patients aged 1 to 5 from one centre in Guangzhou."
        )
    return text


def limitations(report: dict) -> list[str]:
    out = []
    res = report["results"]
    estimable = {n: v for n, v in res["findings"].items() if v["estimable"]}
    not_estimable = [n for n, v in res["findings"].items() if not v["estimable"]]
    out.append(
        f"Evaluated on {res['n_images']} images of {res['n_patients']} patients; operating points "
        f"and the temperature come from {res['validation']['n_images']} validation images."
    )
    widths = {
        n: v["auroc"]["high"] - v["auroc"]["low"]
        for n, v in estimable.items()
        if v["auroc"]["high"] is not None
    }
    if widths:
        widest = max(widths, key=widths.get)
        out.append(
            f"The widest AUROC interval is {widest}'s ({widths[widest]:.2f} wide): small counts "
            "give wide intervals; read them before the point estimates."
        )
    if not_estimable:
        out.append(
            f"Not estimable here (no positives or no negatives): {', '.join(not_estimable)}."
        )
    sens = [
        f"{n} {v['operating_points']['sensitivity:0.95']['sensitivity']['estimate']:.2f}"
        for n, v in estimable.items()
        if v["operating_points"]["sensitivity:0.95"]["sensitivity"]["estimate"] is not None
    ]
    if sens:
        out.append(
            "The 'sensitivity >= 0.95' threshold was set on validation; on these images its "
            f"sensitivity was {', '.join(sens)}: a target met on validation is not a guarantee."
        )
    weaker = []
    for group in report.get("subgroups", {}).values():
        for level, entry in group["levels"].items():
            for name, f in entry["findings"].items():
                overall = res["findings"][name]["auroc"]["estimate"]
                high = f["auroc"]["high"]
                if overall is not None and high is not None and high < overall:
                    weaker.append(
                        f"{name}: weaker for {group['label']} {level} (AUROC "
                        f"{f['auroc']['estimate']:.3f}, interval up to {high:.3f}, vs "
                        f"{overall:.3f} overall)."
                    )
    out += weaker[:SUBGROUP_NOTES_MAX]
    if len(weaker) > SUBGROUP_NOTES_MAX:
        out.append(
            f"... and {len(weaker) - SUBGROUP_NOTES_MAX} more weaker subgroups (see Subgroups)."
        )
    out.append(report["model_card"]["label_quality"])
    out.append(
        "Calibration was fitted on this run's validation split; probabilities need re-calibrating "
        "on local data before they are read as risks at another site or scanner."
    )
    out.append(
        "A single retrospective data set: no prospective or multi-site validation, no comparison "
        "with radiologists, no assessment of clinical benefit."
    )
    return out


def model_card(run: LoadedRun, data: DataConfig, kind: str) -> dict:
    training = run.info.get("training_data", {})
    return {
        "intended_use": (
            "Research and teaching: studying how chest X-ray classifiers behave, comparing "
            "methods, and showing how such a model should be evaluated. Outputs are for "
            "researchers, with the uncertainty shown in this report."
        ),
        "out_of_scope": (
            "Diagnosis, triage, screening or any treatment decision; use on patients, equipment, "
            "views (lateral, portable if unseen) or populations unlike the training data; "
            "findings the model was not trained on; use without re-validation on local data."
        ),
        "training_data": {
            "path": training.get("path", run.config.data.path),
            "source": kind,
            "n_train": training.get("n_train"),
            "n_val": training.get("n_val"),
            "findings": run.findings,
            "task": run.task,
            "split": "by patient, seeded (split.csv in the run folder)",
        },
        "label_quality": label_quality(kind, run.config.data.path, run.config.data.uncertain),
        "preprocessing": run.config.preprocess.model_dump(),
        "model": {
            "arch": run.config.model.arch,
            "image_size": run.config.preprocess.image_size,
            "pretrained": run.config.model.pretrained,
            "best_epoch": run.info.get("best_epoch"),
        },
        "evaluation_data": data.path,
        "not_a_medical_device": NOT_A_MEDICAL_DEVICE,
    }
