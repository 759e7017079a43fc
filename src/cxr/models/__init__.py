"""Backbones behind one interface (`Classifier`), built by name from the registry."""

# each module registers its architectures on import
from cxr.models import convnext, densenet, efficientnet, ensemble, resnet, xrv  # noqa: F401
from cxr.models.registry import (
    ARCHITECTURES,
    COMPOSITES,
    Classifier,
    build_model,
    check_arch,
    check_pretrained,
    load_backbone_file,
    probabilities,
    probabilities_numpy,
)

__all__ = [
    "ARCHITECTURES",
    "COMPOSITES",
    "Classifier",
    "build_model",
    "check_arch",
    "check_pretrained",
    "load_backbone_file",
    "probabilities",
    "probabilities_numpy",
]
