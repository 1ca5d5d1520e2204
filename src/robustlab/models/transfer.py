"""Block transfer for the layer-transfer study (AnB / AnB+ / BnB, Yosinski et al. 2014 style).

AnB: the first n blocks of base A copied into a freshly initialised network and frozen; AnB+:
the same but left trainable. Frozen blocks keep their BatchNorm statistics too: the model
records ``frozen_blocks`` and ``ImageClassifier.train()`` keeps those blocks in eval mode.
"""

from __future__ import annotations

import logging

from robustlab.errors import UserError
from robustlab.models.classifier import ImageClassifier

log = logging.getLogger(__name__)


def _check_count(model: ImageClassifier, n: int) -> int:
    total = len(model.blocks())
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
        raise UserError(f"number of blocks must be a whole number in [0, {total}], got {n!r}")
    return total


def freeze_blocks(model: ImageClassifier, n: int) -> ImageClassifier:
    """Freeze the first ``n`` blocks (parameters and BatchNorm statistics); the rest trains.

    Every other parameter (later blocks, head) gets ``requires_grad=True``. n = 0 unfreezes all.
    """
    _check_count(model, n)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for block in model.blocks()[:n]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    model.frozen_blocks = n
    model.train(model.training)  # re-apply the mode so frozen BatchNorm switches to eval now
    return model


def transfer_blocks(
    source: ImageClassifier, target: ImageClassifier, n: int, freeze: bool
) -> ImageClassifier:
    """Copy the first ``n`` blocks (parameters and buffers) of ``source`` into ``target``.

    Blocks after n and the head keep ``target``'s own (fresh) initialisation. ``freeze=True``
    makes the copied blocks untrainable (AnB), ``freeze=False`` leaves everything trainable
    (AnB+). Returns ``target``, changed in place.
    """
    if (source.spec.arch, source.spec.in_chans) != (target.spec.arch, target.spec.in_chans):
        raise UserError(
            f"block transfer needs the same architecture: source is {source.spec.arch} "
            f"({source.spec.in_chans} channels), target {target.spec.arch} "
            f"({target.spec.in_chans} channels)"
        )
    total = _check_count(target, n)
    src_blocks, dst_blocks = source.blocks(), target.blocks()
    if len(src_blocks) != total:
        raise UserError(f"source has {len(src_blocks)} blocks, target {total}")
    for index, (src, dst) in enumerate(zip(src_blocks[:n], dst_blocks[:n], strict=True)):
        try:
            dst.load_state_dict(src.state_dict(), strict=True)
        except RuntimeError as error:
            raise UserError(
                f"block {index} differs between source and target: {str(error).splitlines()[0]}"
            ) from None
    freeze_blocks(target, n if freeze else 0)
    log.info("transferred %d of %d blocks (%s)", n, total, "frozen" if freeze else "trainable")
    return target
