"""Finding names across label sets, so a model trained on one is evaluated on another.

NIH ChestX-ray14 says "Effusion", CheXpert "Pleural Effusion"; Kermany's classes are NORMAL and
PNEUMONIA, where NIH and CheXpert say "No Finding" and "Pneumonia". As torchxrayvision's
relabelling does, every name is mapped to one canonical name, and a model is evaluated on the
findings whose canonical names it shares with the data; the rest are listed as left out, never
silently scored against another finding.

    cxr evaluate --model runs/nih --data ../shared/data/chexpert --map nih->chexpert
    cxr evaluate --model runs/kermany --data ../shared/data/nih-chestxray14-1000 --map kermany->nih
    cxr evaluate --model runs/mine --data other/ --map names.yaml   # {model name: data name}

A mapped evaluation scores each shared finding as its own binary problem (the model's
probability for it against the data's label), at the model's thresholds for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cxr.data.nih import NIH_FINDINGS, NO_FINDING
from cxr.errors import ConfigError

LABEL_SETS: dict[str, list[str]] = {
    "nih": [*NIH_FINDINGS, NO_FINDING],  # the reader's own list (cxr.data.nih)
    "chexpert": [
        "No Finding",
        "Enlarged Cardiomediastinum",
        "Cardiomegaly",
        "Lung Opacity",
        "Lung Lesion",
        "Edema",
        "Consolidation",
        "Pneumonia",
        "Atelectasis",
        "Pneumothorax",
        "Pleural Effusion",
        "Pleural Other",
        "Fracture",
        "Support Devices",
    ],
    "kermany": ["NORMAL", "PNEUMONIA"],
}

# Names that mean the same finding in different label sets (compared lower-case, "_" = " ").
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Effusion": ("effusion", "pleural effusion"),
    "No Finding": ("no finding", "normal", "healthy"),
    "Pleural Thickening": ("pleural thickening",),
    "Lung Lesion": ("lung lesion",),  # CheXpert's Lung Lesion is not NIH's Mass or Nodule alone
}


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


_CANONICAL = {alias: canon for canon, aliases in SYNONYMS.items() for alias in aliases}


def canonical(name: str) -> str:
    """The one name a finding has in every label set ("Pleural Effusion" -> "Effusion")."""
    key = _key(name)
    return _CANONICAL.get(key, key)


@dataclass(frozen=True)
class FindingMap:
    """Pairs (model column, data column) of the same finding, and what was left out."""

    pairs: list[tuple[int, int]]
    model_findings: list[str]
    data_findings: list[str]
    spec: str

    @property
    def names(self) -> list[str]:
        """Model name, with the data's name when it differs ("Effusion = Pleural Effusion")."""
        out = []
        for i, j in self.pairs:
            m, d = self.model_findings[i], self.data_findings[j]
            out.append(m if m == d else f"{m} = {d}")
        return out

    def apply(self, labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray):
        """The shared findings' (labels, scores, thresholds), columns in pair order."""
        model_cols = [i for i, _ in self.pairs]
        data_cols = [j for _, j in self.pairs]
        return labels[:, data_cols], scores[:, model_cols], np.asarray(thresholds)[model_cols]

    def as_dict(self) -> dict:
        used_m = {i for i, _ in self.pairs}
        used_d = {j for _, j in self.pairs}
        return {
            "spec": self.spec,
            "pairs": {self.model_findings[i]: self.data_findings[j] for i, j in self.pairs},
            "model_only": [f for i, f in enumerate(self.model_findings) if i not in used_m],
            "data_only": [f for j, f in enumerate(self.data_findings) if j not in used_d],
        }


def _check_set(name: str, findings: list[str], side: str) -> None:
    known = {canonical(f) for f in LABEL_SETS[name]}
    foreign = [f for f in findings if canonical(f) not in known]
    if foreign:
        raise ConfigError(
            f"--map: the {side}'s findings {foreign} are not {name} names "
            f"({', '.join(LABEL_SETS[name])})"
        )


def _read_pairs(path: Path) -> dict[str, str]:
    try:
        raw = (
            yaml.safe_load(path.read_text())
            if path.suffix in (".yaml", ".yml")
            else json.loads(path.read_text())
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"--map {path}: cannot read it ({exc})") from None
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        raise ConfigError(
            f"--map {path}: expected a mapping of model finding -> data finding "
            "names, e.g. {Effusion: Pleural Effusion}"
        )
    return raw


def match_findings(model_findings: list[str], data_findings: list[str], spec: str) -> FindingMap:
    """The findings a model and data share under `spec`: "SRC->DST" with SRC and DST among
    nih, chexpert, kermany (names matched through their canonical names), or a YAML/JSON file
    of {model finding: data finding} for the user's own names. Raises when none is shared."""
    spec = str(spec).strip()
    model_findings, data_findings = list(model_findings), list(data_findings)
    if "->" in spec:
        src, _, dst = (part.strip().lower() for part in spec.partition("->"))
        for name in (src, dst):
            if name not in LABEL_SETS:
                raise ConfigError(
                    f"--map {spec!r}: {name!r} is not one of {', '.join(LABEL_SETS)} (or give "
                    "a YAML file of names)"
                )
        _check_set(src, model_findings, "model")
        _check_set(dst, data_findings, "data")
        data_index = {canonical(f): j for j, f in enumerate(data_findings)}
        pairs = [
            (i, data_index[canonical(f)])
            for i, f in enumerate(model_findings)
            if canonical(f) in data_index
        ]
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(
                f"--map {spec!r}: give SRC->DST (nih, chexpert, kermany) or a "
                "YAML/JSON file of model finding -> data finding names"
            )
        wanted = _read_pairs(path)
        for m, d in wanted.items():
            if m not in model_findings:
                raise ConfigError(
                    f"--map {path}: {m!r} is not a model finding ({', '.join(model_findings)})"
                )
            if d not in data_findings:
                raise ConfigError(
                    f"--map {path}: {d!r} is not a finding of the data ({', '.join(data_findings)})"
                )
        pairs = [(model_findings.index(m), data_findings.index(d)) for m, d in wanted.items()]
    if not pairs:
        raise ConfigError(
            f"--map {spec}: the model ({', '.join(model_findings)}) and the data "
            f"({', '.join(data_findings)}) share no finding"
        )
    return FindingMap(pairs, model_findings, data_findings, spec)
