"""Image backbones for :mod:`recsys.features.image`: a small randomly initialised CNN (tests,
offline machines) and any timm model, with weights from timm or a local state-dict file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from recsys.errors import ConfigError

if TYPE_CHECKING:
    from recsys.features.image import ImageEncoderConfig

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBackbone(nn.Module):
    """Small plain-torch CNN: stem + one stride-2 stage per width + global average pool."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        prev = widths[0]
        for width in widths:
            layers += [
                nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        self.out_dim = prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class TimmBackbone(nn.Module):
    """A timm model without classifier head (``num_classes=0``): pooled features."""

    def __init__(self, name: str):
        super().__init__()
        timm = import_timm()
        self.model = timm.create_model(name, pretrained=False, num_classes=0)
        self.out_dim = int(self.model.num_features)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.default_mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.default_std = tuple(cfg.get("std", IMAGENET_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def timm_available() -> bool:
    try:
        import_timm()
    except ConfigError:
        return False
    return True


def import_timm():
    try:
        import timm
    except Exception as err:  # ImportError, or torchvision failing to load its operators
        raise ConfigError(
            "image.backbone timm: timm cannot be imported here "
            f"({type(err).__name__}: {err}). timm needs torchvision, whose wheels pin one exact "
            "torch version; use backbone: cnn or a precomputed .npy matrix instead"
        ) from None
    return timm


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch checkpoint (``weights_only``); unwraps
    ``{"state_dict": ...}``/``{"model": ...}`` and strips ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"image.weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"image.weights: cannot read {path}: {err}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"image.weights: {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_backbone(config: ImageEncoderConfig) -> nn.Module:
    """The frozen backbone named by the config, in eval mode, with ``out_dim``."""
    if config.backbone == "timm":
        assert config.timm_model is not None
        backbone: nn.Module = TimmBackbone(config.timm_model)
        target = backbone.model
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            backbone = ConvBackbone(config.cnn_widths)
        target = backbone
    if config.weights is not None:
        state = load_state_dict_file(config.weights)
        try:
            result = target.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ConfigError(
                f"image.weights: {config.weights} does not fit the {config.backbone} backbone "
                f"(it lacks or mis-shapes its parameters): {err}"
            ) from None
        if result.missing_keys:
            shown = ", ".join(result.missing_keys[:5])
            raise ConfigError(
                f"image.weights: {config.weights} lacks {len(result.missing_keys)} parameters of "
                f"the {config.backbone} backbone (e.g. {shown})"
            )
        if result.unexpected_keys:
            log.warning(
                "image.weights: ignored %d keys not used by the backbone (e.g. %s)",
                len(result.unexpected_keys),
                ", ".join(result.unexpected_keys[:3]),
            )
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


# ---------------------------------------------------------------------------------------
# encoder
