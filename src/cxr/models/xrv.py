"""torchxrayvision's chest X-ray classifiers (Cohen et al., MIDL 2022) as cxr architectures.

Built from torchvision with torchxrayvision's module and key names, so its state dicts load by
name and an imported run (`cxr import-weights`) is served without torchxrayvision installed:

- "xrv-densenet121" is `xrv.models.DenseNet`: torchvision's DenseNet-121 layout (features.*,
  classifier) with a one-channel conv0; its `features2` (ReLU, global average pool) is
  `pooled_features`, so Grad-CAM and the OOD gate see what torchxrayvision's own code computes.
- "xrv-resnet50" is `xrv.models.ResNet`: a torchvision ResNet-50 held as `.model` (keys
  "model.conv1.weight", ...; its downloaded file is that inner model's state dict).

torchxrayvision's `op_threshs` buffer is not a weight: `cxr.xrv` turns it into the run's
thresholds. Its automatic resize (`fix_resolution`) is cxr's preprocess.image_size.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from cxr.models.densenet import DenseNet
from cxr.models.registry import Classifier, register


class _Wrapped(nn.Module):
    """torchxrayvision's ResNet: the torchvision model under the attribute `model`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.model = net


def xrv_resnet50(weights=None) -> nn.Module:
    return _Wrapped(tvm.resnet50(weights=weights))


class XrvResNet(Classifier):
    head_name = "model.fc"

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"last": self.model.layer4[-1], "finer": self.model.layer3[-1]}


# ImageNet weights still load (`--pretrained imagenet`): the layouts are torchvision's.
register("xrv-densenet121", tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1, DenseNet)
register("xrv-resnet50", xrv_resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, XrvResNet)
