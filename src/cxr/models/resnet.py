"""torchvision ResNet-18 to -152."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from cxr.models.registry import Classifier, register


class ResNet(Classifier):
    head_name = "fc"

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def cam_layers(self) -> dict[str, nn.Module]:
        # layer4: S / 32 cells a side; layer3: S / 16, finer and less specific to the finding
        return {"last": self.layer4[-1], "finer": self.layer3[-1]}


register("resnet18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, ResNet)
register("resnet34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, ResNet)
register("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, ResNet)
register("resnet101", tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V2, ResNet)
register("resnet152", tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V2, ResNet)
