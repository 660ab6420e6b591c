"""The DPE paper's training objective, as its official code computes it.

Generator: ``L1(G(x), y) + L_RFL + 1e-3 * BCE(D(G(x)), 1)``, where the regularised feature loss
``L_RFL`` is the L1 distance of VGG19 conv5_4 (pre-ReLU) features of G(x) and y, *multiplied*
by the mean absolute difference of their horizontal and vertical gradients. Discriminator: BCE
against smoothed labels, clean ~ U[0.7, 1.2) and enhanced ~ U[0, 0.3), the clean ones clamped
into [0, 1] (the official code lets them exceed 1, which BCE does not define).

At the end: the losses of the deep baselines RetinexNet and DRAN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dpe._image import LUMA

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
    # drawn on the CPU (``generator`` is a CPU stream, the same numbers on any device)
    real = smoothed_labels(clean.shape[0], REAL_LABEL, generator).to(clean.device)
    fake = smoothed_labels(enhanced.shape[0], FAKE_LABEL, generator).to(enhanced.device)
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
            ones = output.new_ones(output.shape[0], 1)  # on the output's device
            bce = F.binary_cross_entropy_with_logits(disc.logits(output), ones)
            terms["adversarial"] = obj.adversarial_weight * bce
        total = sum(terms.values())
        return total, {k: float(v.detach()) for k, v in terms.items()}


# ---------------------------------------------------------------------------------------------
# Baselines. DRAN trains with plain L1(output, clean): the pixel-only Objective above. RetinexNet's
# two stages need its decomposition of both images, not only its output, so its loss runs the
# model itself: ``RetinexLoss(stage)(model, low, clean) -> (total, terms)``.


def illumination_smoothness(illumination: torch.Tensor, reflectance: torch.Tensor) -> torch.Tensor:
    """RetinexNet's structure-aware smoothness: mean(|∇L| · exp(−10 · |∇ gray(R)|)).

    Summed over the horizontal and vertical forward differences, each term a mean over pixels.
    ``illumination`` is (B, 1, H, W), ``reflectance`` (B, 3, H, W).
    """
    weights = reflectance.new_tensor(LUMA).view(1, 3, 1, 1)
    gray = (reflectance * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    total = illumination.new_zeros(())
    for dim in (-1, -2):
        grad_l = torch.diff(illumination, dim=dim).abs()  # (B, 1, H, W-1), then (B, 1, H-1, W)
        grad_r = torch.diff(gray, dim=dim).abs()
        total = total + (grad_l * torch.exp(-10 * grad_r)).mean()
    return total


def decomposition_loss(
    low: torch.Tensor,
    normal: torch.Tensor,
    decomposed_low: tuple[torch.Tensor, torch.Tensor],
    decomposed_normal: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RetinexNet's Decom-Net loss, from both images and their (R, L) decompositions.

    Σ_ij λ_ij ‖R_i ∘ L_j − S_j‖₁ (λ = 1 for i = j, 0.001 otherwise) + 0.01 ‖R_low − R_normal‖₁
    + 0.1 · (smoothness(L_low, R_low) + smoothness(L_normal, R_normal)); ‖·‖₁ is a mean.
    """
    (r_low, l_low), (r_normal, l_normal) = decomposed_low, decomposed_normal
    images = {"low": (low, r_low, l_low), "normal": (normal, r_normal, l_normal)}
    recon = low.new_zeros(())
    for i, (_, r_i, _) in images.items():
        for j, (s_j, _, l_j) in images.items():
            weight = 1.0 if i == j else 0.001  # the cross terms tie both R to either L
            recon = recon + weight * F.l1_loss(r_i * l_j, s_j)
    terms = {
        "recon": recon,
        "equal_r": 0.01 * F.l1_loss(r_low, r_normal),
        "smooth": 0.1
        * (illumination_smoothness(l_low, r_low) + illumination_smoothness(l_normal, r_normal)),
    }
    return sum(terms.values()), terms


def relight_loss(
    normal: torch.Tensor, reflectance_low: torch.Tensor, relit: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RetinexNet's relight loss: ‖R_low ∘ L̂ − S_normal‖₁ + 3 · smoothness(L̂, R_low)."""
    terms = {
        "relight": F.l1_loss(reflectance_low * relit, normal),
        "smooth": 3 * illumination_smoothness(relit, reflectance_low),
    }
    return sum(terms.values()), terms


class RetinexLoss(nn.Module):
    """RetinexNet's objective in one of its two stages, "decom" or "relight".

    "decom" trains the Decom-Net alone. "relight" decomposes the low image without gradient
    (the Decom-Net stays frozen, as in the paper) and trains the Enhance-Net alone.
    """

    STAGES = ("decom", "relight")

    def __init__(self, stage: str):
        super().__init__()
        if stage not in self.STAGES:
            raise ValueError(f"stage must be one of {self.STAGES}; got {stage!r}.")
        self.stage = stage

    def describe(self) -> str:
        if self.stage == "decom":
            return (
                "sum_ij w_ij*L1(R_i*L_j,S_j) (w=1 if i=j else 1e-3) + 0.01*L1(R_low,R_normal)"
                " + 0.1*(Smooth(L_low,R_low)+Smooth(L_normal,R_normal))"
            )
        return "L1(R_low*L_hat,S_normal) + 3*Smooth(L_hat,R_low)"

    def forward(
        self, model: nn.Module, low: torch.Tensor, clean: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.stage == "decom":
            total, terms = decomposition_loss(
                low, clean, model.decompose(low), model.decompose(clean)
            )
        else:
            with torch.no_grad():
                r_low, l_low = model.decompose(low)
            total, terms = relight_loss(clean, r_low, model.relight(r_low, l_low))
        return total, {k: float(v.detach()) for k, v in terms.items()}
