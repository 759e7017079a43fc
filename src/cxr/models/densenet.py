"""torchvision DenseNet-121: CheXNet's backbone (Rajpurkar et al. 2017), and torchxrayvision's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from cxr.models.registry import Classifier, register


class DenseNet(Classifier):
    head_name = "classifier"

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def cam_layers(self) -> dict[str, nn.Module]:
        # norm5 closes denseblock4 (S / 32); denseblock3 is at S / 16
        return {"last": self.features.norm5, "finer": self.features.denseblock3}


register("densenet121", tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1, DenseNet)
