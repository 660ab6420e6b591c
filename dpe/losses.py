"""The DPE paper's training objective, as its official code computes it.

Generator: ``L1(G(x), y) + L_RFL + 1e-3 * BCE(D(G(x)), 1)``, where the regularised feature loss
``L_RFL`` is the L1 distance of VGG19 conv5_4 (pre-ReLU) features of G(x) and y, *multiplied*
by the mean absolute difference of their horizontal and vertical gradients. Discriminator: BCE
against smoothed labels, clean ~ U[0.7, 1.2) and enhanced ~ U[0, 0.3), the clean ones clamped
into [0, 1] (the official code lets them exceed 1, which BCE does not define).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The official code takes these features from torchvision's VGG19 fed [-1, 1] images; the
# original Caffe/Keras weights used here take 0-255 input and give features about 255 times
# larger, which would make L_RFL ten times the L1 term instead of a small fraction of it.
# Dividing by 255 puts the features back in the units of a [0, 1] image.
FEATURE_SCALE = 1 / 255
REAL_LABEL = (0.7, 1.2)  # smoothed label range for clean images (clamped to 1 above)
FAKE_LABEL = (0.0, 0.3)  # smoothed label range for enhanced images


@dataclass
class Objective:
    pixel: bool = True  # L1(G(x), y)
    feature: bool = True  # L_RFL, the gradient-regularised VGG19 feature loss
    adversarial: bool = True  # BCE(D(G(x)), 1) against an SRGAN-style discriminator
    adversarial_weight: float = 1e-3  # the paper's weight of the adversarial term
    feature_weight: float = 1.0  # the official code's "percepRegulator"

    def __post_init__(self):
        if not (self.pixel or self.feature or self.adversarial):
            raise ValueError("the objective needs at least one of pixel, feature, adversarial.")

    def describe(self) -> str:
        """A one-line formula of the enabled terms, for logs and weight metadata."""
        terms = []
        if self.pixel:
            terms.append("L1(G(x),y)")
        if self.feature:
            w = "" if self.feature_weight == 1 else f"{self.feature_weight:g}*"
            terms.append(f"{w}L1(VGG19conv5_4(G(x))/255,VGG19conv5_4(y)/255)*GradL1(G(x),y)")
        if self.adversarial:
            terms.append(f"{self.adversarial_weight:g}*BCE(D(G(x)),1)")
        return " + ".join(terms)


def gradient_difference(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the horizontal plus vertical pixel gradients (a scalar).

    Normalised as the official code does: both sums divided by the element count of the batch.
    """
    dy = torch.diff(output, dim=-2) - torch.diff(target, dim=-2)  # (B, C, H-1, W)
    dx = torch.diff(output, dim=-1) - torch.diff(target, dim=-1)  # (B, C, H, W-1)
    return (dy.abs().sum() + dx.abs().sum()) / output.numel()


def regularized_feature_loss(
    features: nn.Module, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """L_RFL: L1 of ``features`` of output and target, times :func:`gradient_difference`.

    Features are multiplied by ``FEATURE_SCALE`` first (see its comment).
    """
    with torch.no_grad():
        target_features = features(target)  # the target needs no gradient
    distance = F.l1_loss(features(output), target_features) * FEATURE_SCALE
    return distance * gradient_difference(output, target)


def smoothed_labels(
    n: int, low_high: tuple[float, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` labels drawn uniformly from ``low_high``, clamped into [0, 1], shape (n, 1)."""
    low, high = low_high
    labels = torch.rand(n, 1, generator=generator) * (high - low) + low
    return labels.clamp_(0.0, 1.0)


def discriminator_loss(
    disc: nn.Module,
    clean: torch.Tensor,
    enhanced: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BCE of the discriminator on clean images (label ~1) and enhanced ones (label ~0)."""
    real = smoothed_labels(clean.shape[0], REAL_LABEL, generator)
    fake = smoothed_labels(enhanced.shape[0], FAKE_LABEL, generator)
    # BCE on logits is BCE on the sigmoid output, without its overflow at saturation
    return F.binary_cross_entropy_with_logits(
        disc.logits(clean), real
    ) + F.binary_cross_entropy_with_logits(disc.logits(enhanced.detach()), fake)


class GeneratorLoss(nn.Module):
    """The generator's objective; returns the total and each enabled term (detached floats)."""

    def __init__(self, objective: Objective, features: nn.Module | None = None):
        super().__init__()
        self.objective = objective
        if objective.feature and features is None:
            from dpe.nets.vgg import VGG19Features

            features = VGG19Features()
        self.features = features if objective.feature else None

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, disc: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        obj = self.objective
        terms: dict[str, torch.Tensor] = {}
        if obj.pixel:
            terms["pixel"] = F.l1_loss(output, target)
        if obj.feature:
            terms["feature"] = obj.feature_weight * regularized_feature_loss(
                self.features, output, target
            )
        if obj.adversarial:
            if disc is None:
                raise ValueError("the adversarial term needs the discriminator: pass disc=.")
            ones = torch.ones(output.shape[0], 1)
            bce = F.binary_cross_entropy_with_logits(disc.logits(output), ones)
            terms["adversarial"] = obj.adversarial_weight * bce
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}
