"""The search space of `cxr tune`: read from YAML, checked against the typed configs, sampled.

A space names config fields as SECTION.FIELD (the names `cxr train --set` takes) and gives each a
range (`low`, `high`, optional `log` / `step`) or a list of `choices`; `when` makes a parameter
conditional on an earlier categorical one (momentum only for SGD, gamma only for focal loss).
Every bound and every choice is validated by the same pydantic configs a run uses, so a typo or an
impossible value is an error that names the parameter before any image is decoded.
"""

from __future__ import annotations

import json
import typing
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from cxr.config import RunConfig, config_from_dict
from cxr.errors import ConfigError
from cxr.losses import MULTICLASS_LOSSES, MULTILABEL_LOSSES
from cxr.models import check_arch

DEFAULT_SPACE = Path(__file__).resolve().parents[3] / "configs" / "search_space.yaml"
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "median", "asha", "none")
_TOP_KEYS = {"epochs", "min_epochs", "sampler", "pruner", "fixed", "params"}
_PARAM_KEYS = {"low", "high", "log", "step", "choices", "when"}
_SAMPLER_KEYS = {"name", "seed", "startup_trials"}
_PRUNER_KEYS = {"name", "reduction_factor", "startup_trials"}
# Fields a study must not vary: they change the data or the split (trials would stop being
# comparable), the budget (set by `epochs`), or where the run goes (set per trial).
_FORBIDDEN = ("data.", "out_dir", "train.epochs")


@dataclass(frozen=True)
class Param:
    """One searched config field: a float/int range or a list of choices, maybe conditional."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(parent in sampled and sampled[parent] in ok for parent, ok in self.when.items())

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            out: dict[str, Any] = {"choices": list(self.choices)}
        else:
            out = {"low": self.low, "high": self.high, "log": self.log, "step": self.step}
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    epochs: int = 8
    min_epochs: int = 1
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 5
    pruner: str = "hyperband"
    reduction_factor: int = 3
    pruner_startup_trials: int = 3
    source: str = "search space"

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every active parameter, in file order (a condition's parent comes first)."""
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.name] = param.suggest(trial)
        return sampled

    def apply(self, base: RunConfig, values: dict[str, Any], **top: Any) -> RunConfig:
        """base, then the fixed fields, then `values` (SECTION.FIELD -> value), then `top`."""
        raw = json.loads(base.model_dump_json())
        for name, value in {**self.fixed, **values}.items():
            section, key = name.split(".", 1)
            raw[section][key] = value
        raw["train"]["epochs"] = self.epochs
        for name, value in top.items():  # e.g. out_dir="...", data={"split_file": ...}
            if isinstance(value, dict):
                raw[name] |= value
            else:
                raw[name] = value
        return config_from_dict(raw, source=self.source)

    def for_task(self, task: str) -> SearchSpace:
        """Drop loss choices that do not fit the task (BCE on a multiclass folder, say)."""
        fits = MULTILABEL_LOSSES if task == "multilabel" else MULTICLASS_LOSSES
        params = []
        for p in self.params:
            if p.name == "train.loss":
                kept = tuple(c for c in p.choices if c in fits or c == "auto")
                if not kept:
                    raise ConfigError(
                        f"{self.source}: params.train.loss: none of {list(p.choices)} fits a "
                        f"{task} task (use some of {list(fits)})"
                    )
                if kept != p.choices:
                    dropped = [c for c in p.choices if c not in kept]
                    print(
                        f"search space: train.loss {dropped} left out: they do not fit a {task} "
                        "task"
                    )
                p = replace(p, choices=kept)
            params.append(p)
        return replace(self, params=tuple(params))

    def override(
        self, epochs: int | None = None, sampler: str | None = None, pruner: str | None = None
    ) -> SearchSpace:
        """The same space with the budget, sampler or pruner of the command line."""
        changes: dict[str, Any] = {}
        if epochs is not None:
            changes["epochs"] = _int(epochs, "--epochs", low=self.min_epochs)
        if sampler is not None:
            changes["sampler"] = _pick(sampler, SAMPLERS, "--sampler")
        if pruner is not None:
            changes["pruner"] = _pick(pruner, PRUNERS, "--pruner")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Everything that decides what trials are run; two workers of one study must agree."""
        return {
            "epochs": self.epochs,
            "min_epochs": self.min_epochs,
            "sampler": {"name": self.sampler, "startup_trials": self.startup_trials},
            "pruner": {
                "name": self.pruner,
                "reduction_factor": self.reduction_factor,
                "startup_trials": self.pruner_startup_trials,
            },
            "fixed": dict(self.fixed),
            "params": {p.name: p.to_dict() for p in self.params},
        }


def build_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The space's sampler; `seed` overrides its seed (a joining worker's own)."""
    seed = space.seed if seed is None else seed
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models parameters jointly, within each conditional subspace
        # (the SGD trials' momentum apart from the Adam trials). constant_liar: workers sampling
        # at once avoid the region a running trial already covers.
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=space.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def build_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    factories = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=space.min_epochs,
            max_resource=space.epochs,
            reduction_factor=space.reduction_factor,
        ),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=space.min_epochs, reduction_factor=space.reduction_factor
        ),
        # Epochs count from 1; the earliest prune is at step == n_warmup_steps.
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.min_epochs
        ),
        "none": optuna.pruners.NopPruner,
    }
    return factories[space.pruner]()


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read a search space YAML (the commented default in configs/ when path is None)."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_SPACE
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return search_space_from_dict(raw, source=str(path))


def search_space_from_dict(raw: Any, source: str = "search space") -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'params', got {type(raw).__name__}")
    _no_unknown(raw, _TOP_KEYS, source, "top level")
    epochs = _int(raw.get("epochs", 8), f"{source}: epochs", low=1)
    min_epochs = _int(raw.get("min_epochs", 1), f"{source}: min_epochs", low=1)
    if min_epochs > epochs:
        raise ConfigError(f"{source}: min_epochs ({min_epochs}) is more than epochs ({epochs})")
    sampler = _section(raw, "sampler", _SAMPLER_KEYS, source)
    pruner = _section(raw, "pruner", _PRUNER_KEYS, source)
    sampler_name = _pick(sampler.get("name", "tpe"), SAMPLERS, f"{source}: sampler.name")
    pruner_name = _pick(pruner.get("name", "hyperband"), PRUNERS, f"{source}: pruner.name")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: fixed: expected a mapping of SECTION.FIELD: value")
    for name, value in fixed.items():
        _field_type(name, f"{source}: fixed.{name}")
        _check_value(name, value, f"{source}: fixed.{name}")

    specs = raw.get("params")
    if not isinstance(specs, dict) or not specs:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of SECTION.FIELD: range")
    params: list[Param] = []
    for name, spec in specs.items():
        if name in fixed:
            raise ConfigError(f"{source}: {name} is both fixed and searched; keep one")
        params.append(_parse_param(str(name), spec, params, f"{source}: params.{name}"))
    return SearchSpace(
        params=tuple(params),
        fixed=dict(fixed),
        epochs=epochs,
        min_epochs=min_epochs,
        sampler=sampler_name,
        seed=_int(sampler.get("seed", 0), f"{source}: sampler.seed", low=0),
        startup_trials=_int(sampler.get("startup_trials", 5), f"{source}: sampler.startup_trials"),
        pruner=pruner_name,
        reduction_factor=_int(
            pruner.get("reduction_factor", 3), f"{source}: pruner.reduction_factor", low=2
        ),
        pruner_startup_trials=_int(
            pruner.get("startup_trials", 3), f"{source}: pruner.startup_trials"
        ),
        source=source,
    )


def describe_changes(old: dict, new: dict, prefix: str = "") -> str:
    """'params.train.lr.high: 0.01 -> 0.03; epochs: 8 -> 4' between two SearchSpace.to_dict()s."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = describe_changes(a, b, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return "; ".join(out)


def check_choices_unchanged(old: dict, new: dict, where: str) -> None:
    """Optuna cannot change a categorical parameter's choices inside one study."""
    for name, spec in new["params"].items():
        before = old.get("params", {}).get(name) or {}
        if "choices" in before and "choices" in spec and before["choices"] != spec["choices"]:
            raise ConfigError(
                f"{where}: the choices of {name} cannot change inside a study "
                f"({before['choices']} -> {spec['choices']}); start another --study"
            )


def _parse_param(name: str, spec: Any, earlier: list[Param], where: str) -> Param:
    typ = _field_type(name, where)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with low/high or choices, got {spec!r}")
    _no_unknown(spec, _PARAM_KEYS, where, "parameter")
    when = _parse_when(spec.get("when"), earlier, where)
    if "choices" in spec:
        if {"low", "high", "log", "step"} & set(spec):
            raise ConfigError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: choices repeat a value: {choices}")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)) and c is not None:
                raise ConfigError(f"{where}: choice {c!r} is not a number, string or boolean")
            _check_value(name, c, f"{where}: choice {c!r}")
        return Param(name, "categorical", choices=tuple(choices), when=when)

    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high (or give choices)")
    if typ not in (int, float):
        raise ConfigError(f"{where}: {name} is not numeric; list its values under choices")
    kind = "int" if typ is int else "float"
    low = _number(spec["low"], f"{where}: low", kind)
    high = _number(spec["high"], f"{where}: high", kind)
    if not low < high:
        raise ConfigError(f"{where}: empty range: low ({low}) must be less than high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    step = None if spec.get("step") is None else _number(spec["step"], f"{where}: step", kind)
    if step is not None and (step <= 0 or step > high - low):
        raise ConfigError(f"{where}: step must be > 0 and at most high - low, got {step}")
    if step is not None and log:
        raise ConfigError(f"{where}: log and step cannot be combined (Optuna samples one or other)")
    for bound in (low, high):
        _check_value(name, bound, f"{where}: {'low' if bound == low else 'high'}")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(raw: Any, earlier: list[Param], where: str) -> dict[str, tuple]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: when must map an earlier parameter to a value or a list")
    by_name = {p.name: p for p in earlier}
    out = {}
    for parent, values in raw.items():
        if parent not in by_name or by_name[parent].kind != "categorical":
            raise ConfigError(
                f"{where}: when: {parent!r} must be a parameter with choices listed above this one"
            )
        values = tuple(values) if isinstance(values, list) else (values,)
        unknown = [v for v in values if v not in by_name[parent].choices]
        if unknown:
            raise ConfigError(
                f"{where}: when: {unknown} not among {parent}'s choices "
                f"{list(by_name[parent].choices)}"
            )
        out[str(parent)] = values
    return out


def _field_type(name: str, where: str) -> Any:
    """The annotation of SECTION.FIELD in RunConfig (int, float, a Literal, ...)."""
    if any(name == f or (f.endswith(".") and name.startswith(f)) for f in _FORBIDDEN):
        raise ConfigError(
            f"{where}: {name} cannot be tuned (it changes the data, the split or the budget; "
            "the budget is the space's `epochs`)"
        )
    section, _, key = name.partition(".")
    sections = RunConfig.model_fields
    if not key or section not in sections:
        raise ConfigError(
            f"{where}: unknown parameter {name!r}: expected SECTION.FIELD with SECTION one of "
            f"{[s for s in sections if s != 'out_dir']}"
        )
    fields = sections[section].annotation.model_fields
    if key not in fields:
        raise ConfigError(
            f"{where}: unknown parameter {name!r}: {section} has no field {key!r} "
            f"(fields: {', '.join(fields)})"
        )
    annotation = fields[key].annotation
    return annotation if annotation in (int, float, bool, str) else typing.get_origin(annotation)


def _check_value(name: str, value: Any, where: str) -> None:
    """Validate one value of SECTION.FIELD with the run config's own rules."""
    section, key = name.split(".", 1)
    try:
        config_from_dict({section: {key: value}}, source=where)
        if name == "model.arch":  # the names live in the model registry, not in the config
            check_arch(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _number(value: Any, where: str, kind: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)


def _int(value: Any, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: expected a whole number >= {low}, got {value!r}")
    return value


def _pick(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: unknown {value!r} (expected one of {list(allowed)})")
    return value


def _section(raw: dict, key: str, allowed: set[str], source: str) -> dict:
    section = raw.get(key) or {}
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping with name: ...")
    _no_unknown(section, allowed, source, key)
    return section


def _no_unknown(raw: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} at {where} (expected some of {sorted(allowed)})"
        )
