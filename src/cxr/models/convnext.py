"""torchvision ConvNeXt-Tiny."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from cxr.models.registry import Classifier, register


class ConvNeXt(Classifier):
    head_name = "classifier.2"  # classifier = (LayerNorm2d, Flatten, Linear)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier[1](self.classifier[0](x))

    def cam_layers(self) -> dict[str, nn.Module]:
        # stage 4 (S / 32) and stage 3 (S / 16); indices 7 and 5 of features (stem, stages and
        # downsampling layers alternate)
        return {"last": self.features[7], "finer": self.features[5]}


register("convnext_tiny", tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, ConvNeXt)
