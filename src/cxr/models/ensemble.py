"""An ensemble of trained classifiers as one Classifier: the mean of the members' logits.

Its pooled features are the members' pooled features side by side, and its head is one fixed
linear layer holding every member's head divided by M (the number of members), so
head(pooled_features(x)) = (1/M) sum_m head_m(features_m(x)) exactly. Every consumer of a
Classifier (evaluation, the OOD gate on pooled features, Grad-CAM, the ONNX export as one graph
with logits and features) therefore takes an ensemble unchanged. Grad-CAM looks at the first
member's layers: the ensemble logit's gradient reaches them scaled by 1/M, which the map's
normalisation removes.

The config names the members' architectures (model.members); the weights of all members and of
the averaging head are in the run's one model.safetensors.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.config import ModelConfig
from cxr.errors import ConfigError
from cxr.models.registry import Classifier, build_model, register_composite

ENSEMBLE = "ensemble"


class EnsembleClassifier(Classifier):
    head_name = "mean_head"

    def __init__(self, members: list[Classifier]):
        super().__init__(nn.Module())
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        outputs = {m.head.out_features for m in members}
        if len(outputs) != 1:
            raise ConfigError(f"ensemble members disagree on the number of outputs: {outputs}")
        self.members = nn.ModuleList(members)
        self.mean_head = nn.Linear(sum(m.num_features for m in members), outputs.pop())
        self.mean_head.requires_grad_(False)  # fixed: the mean of the members' heads
        self.refresh_head()

    @torch.no_grad()
    def refresh_head(self) -> None:
        """Set the averaging head from the members' heads (after loading the members)."""
        m = len(self.members)
        self.mean_head.weight.copy_(torch.cat([mem.head.weight for mem in self.members], 1) / m)
        self.mean_head.bias.copy_(torch.stack([mem.head.bias for mem in self.members]).mean(0))

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.pooled_features(x) for m in self.members], dim=1)

    def cam_layers(self) -> dict[str, nn.Module]:
        return self.members[0].cam_layers()

    def set_head(self, num_outputs: int) -> None:
        raise ConfigError("an ensemble's head is the mean of its members'; it cannot be replaced")


def build_ensemble(cfg: ModelConfig, num_outputs: int) -> EnsembleClassifier:
    """Untrained members of the architectures in cfg.members (weights come from the run file)."""
    if len(cfg.members) < 2:
        raise ConfigError(
            f"model.members: an ensemble needs at least 2 architectures, got {cfg.members}"
        )
    if ENSEMBLE in cfg.members:
        raise ConfigError("model.members: an ensemble cannot contain an ensemble")
    members = [build_model(ModelConfig(arch=arch), num_outputs) for arch in cfg.members]
    return EnsembleClassifier(members)


register_composite(ENSEMBLE, build_ensemble)
