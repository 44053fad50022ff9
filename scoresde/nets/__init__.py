"""Neural networks for score models: `net(x, t)` with the shape of `x` (`MLPScoreNet` for
vectors, `UNet` for images); one registry (`NETS`, `register_net`)."""

from .mlp import (
    ACTIVATIONS,
    EMBEDDINGS,
    GaussianFourierEmbedding,
    MLPScoreNet,
    SinusoidalEmbedding,
)
from .registry import NETS, get_net_class, net_from_config, register_net
from .unet import PRESETS, UNet

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "GaussianFourierEmbedding",
    "MLPScoreNet",
    "SinusoidalEmbedding",
    "UNet",
    "PRESETS",
    "NETS",
    "register_net",
    "get_net_class",
    "net_from_config",
]
