"""SyncNet v2 (Chung & Zisserman 2016, the `syncnet_v2.model` of joonson/syncnet_python): the network every
lip-sync paper's LSE-C / LSE-D comes from. Same layers and the same attribute names as syncnet_python's
`SyncNetModel.S`, so its state dict (`syncnet_v2.model`) loads strictly.

Inputs, as the reference feeds them (no normalisation):
- lips: [B, 3, 5, 224, 224] float, 5 consecutive BGR face crops with values 0..255 (cv2.imread of its JPEG frames);
- audio: [B, 1, 13, 20] float, 13 MFCCs (python_speech_features defaults, 100 per second) of the same 0.2 s.
Both towers end in a 1024-d embedding; the reference compares them by Euclidean distance (no normalisation).
"""
from __future__ import annotations

import torch
from torch import nn


def _bn_relu(cls, channels: int) -> list[nn.Module]:
    return [cls(channels), nn.ReLU(inplace=True)]


class SyncNetV2(nn.Module):
    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), *_bn_relu(nn.BatchNorm2d, 64), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), *_bn_relu(nn.BatchNorm2d, 192), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), *_bn_relu(nn.BatchNorm2d, 384),
            nn.Conv2d(384, 256, 3, padding=1), *_bn_relu(nn.BatchNorm2d, 256),
            nn.Conv2d(256, 256, 3, padding=1), *_bn_relu(nn.BatchNorm2d, 256), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), *_bn_relu(nn.BatchNorm3d, 96), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), *_bn_relu(nn.BatchNorm3d, 256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(nn.BatchNorm3d, 256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(nn.BatchNorm3d, 256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu(nn.BatchNorm3d, 256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), *_bn_relu(nn.BatchNorm3d, 512),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] -> [B, 1024]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, lips: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] -> [B, 1024]."""
        return self.netfclip(self.netcnnlip(lips).flatten(1))
