"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for 28x28 inputs."""

from __future__ import annotations

from torch import Tensor, nn

from factorch.models._registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),  # identity on 28x28 inputs; lets other sizes reach the 16x5x5 classifier
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-5: 2 conv layers, 3 Linear layers, 61 k parameters on 28x28 inputs."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
