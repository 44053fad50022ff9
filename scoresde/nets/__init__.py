"""Neural networks for score models: `net(x, t)` with the shape of `x`."""

from scoresde.nets.mlp import (
    ACTIVATIONS,
    EMBEDDINGS,
    GaussianFourierEmbedding,
    MLPScoreNet,
    SinusoidalEmbedding,
)

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "GaussianFourierEmbedding",
    "MLPScoreNet",
    "SinusoidalEmbedding",
]
