"""A UNet heatmap regressor whose depth, width and output stride are set by the configuration."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections; outputs one heatmap logit map per landmark.

    `depth` pooling steps, `width` channels at full resolution (doubling per level), and the
    decoder stops at 1/`stride` of the input, which saves the costliest full-size layers.
    """

    def __init__(self, num_landmarks: int, width: int = 16, depth: int = 4, stride: int = 2) -> None:
        super().__init__()
        if stride & (stride - 1) or not 1 <= stride <= 2**depth:
            raise ValueError("stride must be a power of two no larger than 2**depth")
        channels = [width * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList([_conv_block(1, channels[0])] + [
            _conv_block(channels[level - 1], channels[level]) for level in range(1, depth + 1)
        ])
        decoder_levels = range(depth - 1, stride.bit_length() - 2, -1)
        self.upsample = nn.ModuleList([
            nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2) for level in decoder_levels
        ])
        self.decoder = nn.ModuleList([_conv_block(2 * channels[level], channels[level]) for level in decoder_levels])
        self.head = nn.Conv2d(channels[stride.bit_length() - 1], num_landmarks, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        features = image
        for level, block in enumerate(self.encoder):
            features = block(features if level == 0 else self.pool(features))
            skips.append(features)
        features = skips.pop()
        for upsample, block in zip(self.upsample, self.decoder):
            features = block(torch.cat([upsample(features), skips.pop()], dim=1))
        return self.head(features)


class SpatialSoftmax(nn.Module):
    """Wraps a heatmap model so each landmark's map becomes a probability distribution (for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)
        batch, landmarks, height, width = logits.shape
        return torch.softmax(logits.flatten(2), dim=2).reshape(batch, landmarks, height, width)
