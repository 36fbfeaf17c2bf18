"""Segmentation losses: cross-entropy (class weights, label smoothing, DeepLab's hard pixel
mining), Dice, Lovász and focal, summed with the weights of a :class:`LossConfig`.

    loss = build_loss(LossConfig(cross_entropy=1.0, dice=0.5), "multiclass", 21, 255, None)
    total, parts = loss(model.forward_train(images), masks, iteration)
    total.backward()  # parts: {"ce": 0.91, "dice": 0.64, "total": 1.23}

Multiclass and binary tasks (binary: two classes) take a softmax over K logits (N, K, H, W) and
a target (N, H, W) of class indices; multilabel tasks take K sigmoids and a target (N, K, H, W)
of 0/1. A pixel (multilabel: a pixel of one class) labelled ``ignore_index`` takes no part in
any term, neither in its value nor in its gradient. Everything runs in float32, also under
autocast.

- ``ce``: cross-entropy (multilabel: binary cross-entropy per class), each pixel's loss times
  its class's weight, summed and divided by the number of labelled pixels, as the official
  DeepLab (``train_utils.add_softmax_cross_entropy_loss_for_each_scale``). With
  ``top_k_percent_pixels`` < 1 only the k largest weighted pixel losses count, k that share of
  ALL pixels of the batch (ignored ones included), their sum divided by how many are nonzero;
  with ``hard_example_mining_step`` the share falls linearly from 1 at iteration 0 to
  ``top_k_percent_pixels`` at that step. Label smoothing is torch's (with class weights, the
  smoothing term weights each class's log-probability by that class's weight); multilabel
  targets become t·(1 − ε) + ε/2.
- ``dice``: 1 − soft Dice per class over the whole batch, averaged over the classes present in
  the target or predicted (argmax; multilabel: logit > 0) at a labelled pixel. A class absent
  from both has no Dice and is left out; one predicted but absent costs about 1. Unweighted.
- ``lovasz``: the Lovász-softmax (Berman et al., CVPR 2018) over the batch, averaged over the
  classes present in the target; multilabel: the binary Lovász hinge per class, averaged over
  the classes with a labelled pixel. Unweighted.
- ``focal``: −(1 − p_t)^γ · log p_t (Lin et al., ICCV 2017), the class weights as α, divided by
  the number of labelled pixels (multilabel: sigmoid per class, over labelled entries).
- ``aux``: the same weighted sum on ``outputs["aux"]``, added times ``aux_weight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as _torchvision_sigmoid_focal

from atrous.data.balance import CLASS_WEIGHTINGS, ClassWeighting
from atrous.data.base import Task

__all__ = [
    "LossConfig",
    "SegmentationLoss",
    "binary_cross_entropy",
    "build_loss",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "lovasz_hinge_loss",
    "lovasz_softmax_loss",
    "mining_share",
    "multilabel_dice_loss",
    "sigmoid_focal_loss",
    "top_k_mean",
]

TASKS = get_args(Task)
#: Smallest Dice denominator (|P| + |G|), as smp's ``soft_dice_score``.
DICE_EPS = 1e-7


@dataclass
class LossConfig:
    """Which loss terms train the model, and their weights (default: plain cross-entropy)."""

    cross_entropy: float = 1.0  # weight of the cross-entropy term ("ce")
    dice: float = 0.0  # weight of the soft Dice term
    lovasz: float = 0.0  # weight of the Lovász-softmax term (multilabel: Lovász hinge)
    focal: float = 0.0  # weight of the focal term
    focal_gamma: float = 2.0  # focal exponent γ (0 makes focal the cross-entropy)
    label_smoothing: float = 0.0  # cross-entropy target smoothing ε, in [0, 1)
    class_weights: list[float] | None = None  # one weight per class, for cross-entropy and focal
    class_weighting: ClassWeighting = "none"  # or weights from the training set's pixel counts
    top_k_percent_pixels: float = 1.0  # share of pixels whose cross-entropy counts (hard mining)
    hard_example_mining_step: int = 0  # iteration where that share reaches its value (0: at once)
    aux_weight: float = 0.4  # weight of the same loss on the auxiliary head's logits

    def __post_init__(self) -> None:
        check_loss_config(self)

    def term_weights(self) -> dict[str, float]:
        """Each term's name (its key in the logged parts) and weight."""
        return {
            "ce": self.cross_entropy,
            "dice": self.dice,
            "lovasz": self.lovasz,
            "focal": self.focal,
        }


def check_loss_config(config: LossConfig) -> None:
    """Raise a ValueError naming the ``loss.`` option that is out of range."""
    for name in ("cross_entropy", "dice", "lovasz", "focal", "focal_gamma", "aux_weight"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"loss.{name} must be a finite number >= 0, got {value}")
    if not any(config.term_weights().values()):
        raise ValueError(
            "loss: cross_entropy, dice, lovasz and focal are all 0; give one a positive weight"
        )
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"loss.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if not 0 < config.top_k_percent_pixels <= 1:
        raise ValueError(
            f"loss.top_k_percent_pixels must be in (0, 1], got {config.top_k_percent_pixels}"
        )
    if config.top_k_percent_pixels < 1 and not config.cross_entropy:
        raise ValueError("loss.top_k_percent_pixels mines the cross-entropy, whose weight is 0")
    if config.hard_example_mining_step < 0:
        raise ValueError(
            f"loss.hard_example_mining_step must be >= 0, got {config.hard_example_mining_step}"
        )
    if config.hard_example_mining_step and config.top_k_percent_pixels == 1:
        raise ValueError(
            "loss.hard_example_mining_step ramps the mined share down to "
            "loss.top_k_percent_pixels, which is 1 (no mining): set it below 1"
        )
    if config.class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(
            f"loss.class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, "
            f"got {config.class_weighting!r}"
        )
    if config.class_weights is not None:
        if config.class_weighting != "none":
            raise ValueError(
                "give loss.class_weights or loss.class_weighting, not both "
                f"(class_weighting is {config.class_weighting!r})"
            )
        _check_weights(torch.as_tensor(config.class_weights, dtype=torch.float32))


def _check_weights(weights: Tensor) -> None:
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"loss.class_weights must be finite and >= 0, got {weights.tolist()}")
    if not (weights > 0).any():
        raise ValueError("loss.class_weights are all 0: no pixel would count")


def mining_share(
    top_k_percent_pixels: float, hard_example_mining_step: int, iteration: int
) -> float | None:
    """The share of all pixels hard mining keeps at ``iteration``; None when it does not mine.

    DeepLab's ramp: ``ratio = min(1, iteration / step)``, share ``ratio·top_k + 1 − ratio``.
    """
    if top_k_percent_pixels >= 1:
        return None
    if iteration >= hard_example_mining_step:  # also when it is 0: mine at once
        return top_k_percent_pixels
    ratio = iteration / hard_example_mining_step
    return ratio * top_k_percent_pixels + 1.0 - ratio


def top_k_mean(losses: Tensor, share: float) -> Tensor:
    """DeepLab's hard pixel mining: the sum of the ``int(share·numel)`` largest ``losses`` over
    how many of them are nonzero (0 when none is). Ignored pixels must hold loss 0."""
    k = int(share * losses.numel())
    top = losses.flatten().topk(k, sorted=False).values
    return top.sum() / top.count_nonzero().clamp(min=1)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    share: float | None = None,
) -> Tensor:
    """Softmax cross-entropy of (N, K, H, W) ``logits`` against (N, H, W) ``target``: the sum
    of class-weighted pixel losses over the labelled pixel count, or with a ``share`` (see
    :func:`mining_share`) the :func:`top_k_mean` of the pixel losses."""
    losses = F.cross_entropy(  # a sum, or (N, H, W) pixel losses (0 where ignored) to mine
        logits.float(),
        target,
        weight=weights,
        ignore_index=ignore_index,
        reduction="sum" if share is None else "none",
        label_smoothing=label_smoothing,
    )
    if share is None:
        return losses / (target != ignore_index).sum().clamp(min=1)
    return top_k_mean(losses, share)


def _entry_weights(labelled: Tensor, weights: Tensor | None) -> Tensor:
    """(N, K, H, W) multipliers: the class weight where labelled, 0 where ignored."""
    mask = labelled.float()
    return mask if weights is None else mask * weights.view(1, -1, *([1] * (mask.ndim - 2)))


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    weights: Tensor | None = None,
    label_smoothing: float = 0.0,
    share: float | None = None,
) -> Tensor:
    """Multilabel cross-entropy: a sigmoid per class, each entry's loss times its class weight,
    over the labelled entries of (N, K, H, W) ``target`` (mined over all entries with ``share``)."""
    labelled = target != ignore_index
    truth = torch.where(labelled, target, 0).float()
    if label_smoothing:
        truth = truth * (1 - label_smoothing) + label_smoothing / 2
    losses = F.binary_cross_entropy_with_logits(logits.float(), truth, reduction="none")
    losses = losses * _entry_weights(labelled, weights)
    if share is None:
        return losses.sum() / labelled.sum().clamp(min=1)
    return top_k_mean(losses, share)


def _soft_dice(probs: Tensor, truth: Tensor, predicted: Tensor, labelled: Tensor) -> Tensor:
    """1 − 2·|P∩G| / (|P| + |G|) per class over batch and pixels, labelled pixels only,
    averaged over the classes in the target or the prediction (0 when there is none)."""
    dims = (0, *range(2, probs.ndim))
    mask = labelled.to(probs.dtype)
    probs, truth = probs * mask, truth.to(probs.dtype) * mask
    overlap = (probs * truth).sum(dims)  # (K,)
    size = probs.sum(dims) + truth.sum(dims)
    per_class = 1 - 2 * overlap / size.clamp(min=DICE_EPS)
    present = (truth + predicted.to(probs.dtype) * mask).sum(dims) > 0
    return (per_class * present).sum() / present.sum().clamp(min=1)


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Soft Dice loss of softmax probabilities (module docstring: which classes it averages)."""
    num_classes = logits.shape[1]
    labelled = target != ignore_index
    truth = F.one_hot(torch.where(labelled, target, 0), num_classes).movedim(-1, 1)
    predicted = F.one_hot(logits.argmax(1), num_classes).movedim(-1, 1)
    return _soft_dice(logits.float().softmax(1), truth, predicted, labelled.unsqueeze(1))


def multilabel_dice_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Soft Dice loss of per-class sigmoids against (N, K, H, W) 0/1 ``target``."""
    labelled = target != ignore_index
    truth = torch.where(labelled, target, 0)
    return _soft_dice(logits.float().sigmoid(), truth, logits > 0, labelled)


def _lovasz(errors: Tensor, truth: Tensor) -> Tensor:
    """Per column of (P, C) ``errors``: the Lovász extension of the Jaccard loss (Berman et al.,
    Alg. 1), the dot product of the errors sorted down with the Jaccard increments.

    Only positive errors count, so an entry given error −1 (an ignored one, with truth 0) sorts
    after all of them and changes neither the value nor the gradient.
    """
    errors, order = errors.sort(dim=0, descending=True)
    truth = truth.gather(0, order).float()
    positives = truth.sum(0)
    intersection = positives - truth.cumsum(0)
    union = positives + (1 - truth).cumsum(0)
    jaccard = 1 - intersection / union
    increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (errors.relu() * increments).sum(0)  # (C,)


def lovasz_softmax_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Lovász-softmax over the batch's labelled pixels, averaged over the classes present."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(1).movedim(1, -1).reshape(-1, num_classes)  # (P, K)
    target = target.reshape(-1)
    labelled = (target != ignore_index).unsqueeze(1)
    truth = F.one_hot(torch.where(labelled[:, 0], target, 0), num_classes) * labelled
    errors = torch.where(labelled, (truth - probs).abs(), -1.0)
    present = truth.sum(0) > 0
    return (_lovasz(errors, truth) * present).sum() / present.sum().clamp(min=1)


def lovasz_hinge_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Binary Lovász hinge per class of a multilabel batch, over that class's labelled pixels,
    averaged over the classes with any."""
    num_classes = logits.shape[1]
    logits = logits.float().movedim(1, -1).reshape(-1, num_classes)  # (P, K)
    target = target.movedim(1, -1).reshape(-1, num_classes)
    labelled = target != ignore_index
    truth = torch.where(labelled, target, 0)
    errors = torch.where(labelled, 1 - logits * (2 * truth - 1), -1.0)
    counted = labelled.any(0)
    return (_lovasz(errors, truth) * counted).sum() / counted.sum().clamp(min=1)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    gamma: float = 2.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Softmax focal loss −α_t·(1 − p_t)^γ·log p_t, α the class weights (1 without), summed
    over labelled pixels and divided by their number."""
    labelled = target != ignore_index
    safe = torch.where(labelled, target, 0)
    log_p = F.log_softmax(logits.float(), 1).gather(1, safe.unsqueeze(1)).squeeze(1)
    log_p = torch.where(labelled, log_p, -1.0)  # no 0^γ (an infinite slope) where ignored
    losses = -(1 - log_p.exp()).pow(gamma) * log_p * labelled
    if weights is not None:
        losses = losses * weights[safe]
    return losses.sum() / labelled.sum().clamp(min=1)


def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    gamma: float = 2.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Multilabel focal loss (torchvision's, without its α balance), each entry times its class
    weight, summed over labelled entries and divided by their number."""
    labelled = target != ignore_index
    truth = torch.where(labelled, target, 0).float()
    logits = torch.where(labelled, logits.float(), 0.0)  # no 0^γ (an infinite slope) if ignored
    losses = _torchvision_sigmoid_focal(logits, truth, alpha=-1, gamma=gamma, reduction="none")
    return (losses * _entry_weights(labelled, weights)).sum() / labelled.sum().clamp(min=1)


class SegmentationLoss:
    """The weighted sum of a :class:`LossConfig`'s terms for one task (see :func:`build_loss`)."""

    def __init__(
        self,
        config: LossConfig,
        task: Task,
        num_classes: int,
        ignore_index: int,
        class_weights: Tensor | None,
    ) -> None:
        self.config, self.task = config, task
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_weights = class_weights  # (K,) float32, or None: every class weighs 1

    def __call__(
        self, outputs: dict[str, Tensor], target: Tensor, iteration: int
    ) -> tuple[Tensor, dict[str, float]]:
        """The total loss of ``outputs`` ("out", optionally "aux": (N, K, H, W) logits) against
        ``target`` at training step ``iteration``, and its parts as floats for the logs.

        The parts are each term on "out" before its weight, "aux" (the combined loss on the aux
        logits, before ``aux_weight``) and "total": total = Σ weight·term + aux_weight·aux.
        """
        if "out" not in outputs:
            raise ValueError(f"the loss needs outputs['out'] (logits), got keys {list(outputs)}")
        with torch.autocast(outputs["out"].device.type, enabled=False):
            parts = self.terms(outputs["out"], target, iteration)
            total = self.combine(parts)
            if "aux" in outputs and self.config.aux_weight:
                parts["aux"] = self.combine(self.terms(outputs["aux"], target, iteration))
                total = total + self.config.aux_weight * parts["aux"]
        parts["total"] = total
        values = torch.stack([part.detach() for part in parts.values()]).tolist()
        return total, dict(zip(parts, values, strict=True))

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        """Σ weight·term over ``terms`` (as :meth:`terms` returns them)."""
        weights = self.config.term_weights()
        return sum(weights[name] * value for name, value in terms.items())

    def terms(self, logits: Tensor, target: Tensor, iteration: int) -> dict[str, Tensor]:
        """Each term with a nonzero weight, unweighted, for one output's logits."""
        self._check_shapes(logits, target)
        config, ignore, multilabel = self.config, self.ignore_index, self.task == "multilabel"
        weights = self._weights_on(logits.device)
        terms = {}
        if config.cross_entropy:
            share = mining_share(
                config.top_k_percent_pixels, config.hard_example_mining_step, iteration
            )
            ce = binary_cross_entropy if multilabel else cross_entropy
            terms["ce"] = ce(logits, target, ignore, weights, config.label_smoothing, share)
        if config.dice:
            dice = multilabel_dice_loss if multilabel else dice_loss
            terms["dice"] = dice(logits, target, ignore)
        if config.lovasz:
            lovasz = lovasz_hinge_loss if multilabel else lovasz_softmax_loss
            terms["lovasz"] = lovasz(logits, target, ignore)
        if config.focal:
            focal = sigmoid_focal_loss if multilabel else focal_loss
            terms["focal"] = focal(logits, target, ignore, config.focal_gamma, weights)
        return terms

    def _weights_on(self, device: torch.device) -> Tensor | None:
        if self.class_weights is not None and self.class_weights.device != device:
            self.class_weights = self.class_weights.to(device)
        return self.class_weights

    def _check_shapes(self, logits: Tensor, target: Tensor) -> None:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the loss needs logits (N, {self.num_classes}, H, W), got {tuple(logits.shape)}"
            )
        n, _, h, w = logits.shape
        expected = (n, self.num_classes, h, w) if self.task == "multilabel" else (n, h, w)
        if tuple(target.shape) != expected:
            raise ValueError(
                f"a {self.task} target must have shape {expected} for logits "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )


def build_loss(
    config: LossConfig,
    task: Task,
    num_classes: int,
    ignore_index: int,
    class_weights: Tensor | None,
) -> SegmentationLoss:
    """The loss of ``config`` for a ``task`` with ``num_classes`` classes.

    ``class_weights`` are the weights computed from the training set when
    ``config.class_weighting`` asks for them (:func:`atrous.data.balance.class_weights`); the
    explicit ``config.class_weights`` are used otherwise. Raises ValueError for a bad task,
    class count or weight vector.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    if task == "binary" and num_classes != 2:
        raise ValueError(
            f"a binary task has 2 classes (background, foreground), got num_classes {num_classes}"
        )
    fewest = 1 if task == "multilabel" else 2
    if num_classes < fewest:
        raise ValueError(f"a {task} task needs at least {fewest} classes, got {num_classes}")
    weights = _resolve_weights(config, num_classes, class_weights)
    return SegmentationLoss(config, task, num_classes, ignore_index, weights)


def _resolve_weights(
    config: LossConfig, num_classes: int, class_weights: Tensor | None
) -> Tensor | None:
    """The class weights the loss uses, checked: computed ones, else ``config``'s, else None."""
    if class_weights is not None and config.class_weights is not None:
        raise ValueError("class weights given twice: in loss.class_weights and computed ones")
    if config.class_weighting != "none" and class_weights is None:
        raise ValueError(
            f"loss.class_weighting {config.class_weighting!r} needs the weights computed from "
            "the training set's pixel counts (atrous.data.balance.class_weights)"
        )
    given = config.class_weights if class_weights is None else class_weights
    if given is None:
        return None
    weights = torch.as_tensor(given, dtype=torch.float32).detach().clone()
    if weights.shape != (num_classes,):
        raise ValueError(
            f"loss.class_weights needs {num_classes} weights (one per class), "
            f"got shape {tuple(weights.shape)}"
        )
    _check_weights(weights)
    return weights
