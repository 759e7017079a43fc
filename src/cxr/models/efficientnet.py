"""torchvision EfficientNet-B0."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from cxr.models.registry import Classifier, register


class EfficientNet(Classifier):
    head_name = "classifier.1"  # classifier = (Dropout, Linear)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[0](x)  # dropout: identity in eval, as in torchvision's forward

    def cam_layers(self) -> dict[str, nn.Module]:
        # the last 1x1 convolution (S / 32); stage 6 (index 5) ends at S / 16
        return {"last": self.features[-1], "finer": self.features[5]}


register(
    "efficientnet_b0", tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1, EfficientNet
)
