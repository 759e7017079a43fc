"""The out-of-distribution gate: is an input plausibly a frontal chest X-ray like the training
images? Fitted per run (`fit_ood_gate_for_run`), checked before a prediction is shown."""

from cxr.ood.fit import fit_ood_gate, fit_ood_gate_for_run, flag_rate, iter_split_images
from cxr.ood.gate import GATE_FILE, OodConfig, OodGate, OodResult, colour_sample

__all__ = [
    "GATE_FILE",
    "OodConfig",
    "OodGate",
    "OodResult",
    "colour_sample",
    "fit_ood_gate",
    "fit_ood_gate_for_run",
    "flag_rate",
    "iter_split_images",
]
