"""Epsilon sweeps: monotone worst-case curves, reused work, early stopping, minimal epsilons."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import BOUNDED, NUM_CLASSES, CountingModel, make_attack

from robustlab.attacks import (
    FGSM,
    PGD,
    accuracy_from_min_eps,
    flat_norm,
    get_attack,
    sweep,
    sweep_dataset,
)
from robustlab.attacks.sweep import STREAM_CHUNK_BYTES, STREAM_WINDOWS, chunk_size
from robustlab.errors import UserError

EPSILONS = {"linf": [0.02, 0.0, 0.005, 0.05, 0.01], "l2": [0.3, 0.0, 0.05, 1.0, 0.1]}


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("name", BOUNDED)
def test_robust_accuracy_never_rises_with_eps(name, keep, model, batch):
    x, y = batch
    attack = make_attack(name)
    epsilons = EPSILONS[attack.norm]
    result = sweep(attack, model, x, y, epsilons, keep_adversarials=keep)
    assert result.epsilons == epsilons  # the order given
    order = sorted(range(len(epsilons)), key=epsilons.__getitem__)
    accuracy = [result.accuracy()[k] for k in order]
    assert all(later <= earlier for earlier, later in itertools.pairwise(accuracy))
    assert accuracy[0] == 1.0  # eps = 0 on a batch the model classifies correctly
    assert result.success.shape == result.correct.shape == (len(epsilons), x.shape[0])
    assert torch.equal(result.success, ~result.correct)  # untargeted
    assert result.delta_linf.shape == result.delta_l2.shape == (len(epsilons), x.shape[0])
    for k, eps in enumerate(epsilons):
        assert float(flat_norm_of(result, attack.norm)[k].max()) <= eps + 1e-5
    if keep:
        assert len(result.adversarials) == len(epsilons)
        for k, eps in enumerate(epsilons):
            adv = result.adversarials[k]
            assert adv.min() >= 0 and adv.max() <= 1
            assert float(flat_norm(adv - x, attack.norm).max()) <= eps + 1e-5
            with torch.no_grad():
                assert torch.equal(model(adv).argmax(1) == y, result.correct[k])
    else:
        assert result.adversarials is None


def flat_norm_of(result, norm):
    return result.delta_linf if norm == "linf" else result.delta_l2


def test_independent_sweep_equals_separate_runs(model, batch):
    x, y = batch
    epsilons = [0.01, 0.03]
    for attack in (FGSM(), PGD(steps=4), get_attack("sign-noise")):
        result = sweep(attack, model, x, y, epsilons, worst_case=False)
        for eps, adv in zip(epsilons, result.adversarials, strict=True):
            assert torch.equal(adv, attack.with_eps(eps)(model, x, y)), attack.name


def test_fgsm_sweep_computes_the_gradient_once(model, batch):
    x, y = batch
    counting = CountingModel(model).eval()
    sweep(FGSM(), counting, x, y, [0.01, 0.02, 0.03, 0.04, 0.05])
    assert sum(needs_grad for _, needs_grad in counting.calls) == 1


def test_early_stopping_saves_work_and_is_no_weaker(model, batch):
    x, y = batch
    attack = PGD(steps=10)
    epsilons = [0.005, 0.01, 0.02]
    full = sweep(attack, model, x, y, epsilons, keep_adversarials=True)
    early = sweep(attack, model, x, y, epsilons, keep_adversarials=False)
    assert early.images_forwarded < full.images_forwarded
    assert all(e <= f for e, f in zip(early.accuracy(), full.accuracy(), strict=True))


def test_worst_case_carries_smaller_eps_adversarials(model, batch):
    x, y = batch
    result = sweep(FGSM(), model, x, y, [0.01, 0.05, 0.2])
    fooled_first = result.success[0]
    assert fooled_first.any()
    for k in (1, 2):  # fooled at 0.01 -> the same adversarial at every larger eps
        assert torch.equal(
            result.adversarials[k][fooled_first], result.adversarials[0][fooled_first]
        )
        assert result.success[k][fooled_first].all()


@pytest.mark.parametrize("name", ["cw-l2", "minimal"])
def test_minimum_norm_sweep_gives_min_eps_and_the_curve(name, model, batch):
    x, y = batch
    attack = make_attack(name)
    epsilons = EPSILONS[attack.norm]
    result = sweep(attack, model, x, y, epsilons)
    min_eps = result.min_eps
    assert min_eps is not None and min_eps.shape == (x.shape[0],)
    assert torch.isfinite(min_eps).any()
    from_min_eps = accuracy_from_min_eps(min_eps, epsilons)
    for k, eps in enumerate(epsilons):
        # every sample whose minimal adversarial fits in the ball is fooled at eps
        assert result.success[k][min_eps <= eps].all()
        assert result.accuracy()[k] <= from_min_eps[k] + 1e-9
    # min_eps is the norm of a real adversarial
    x_min, eps_min = attack.minimize(model, x, y)
    found = torch.isfinite(eps_min)
    torch.testing.assert_close(flat_norm(x_min - x, attack.norm)[found], eps_min[found])
    with torch.no_grad():
        assert (model(x_min[found]).argmax(1) != y[found]).all()


def test_min_eps_is_zero_for_misclassified_and_inf_when_not_found(model, batch):
    x, y = batch
    wrong = y.clone()
    wrong[0] = (y[0] + 1) % NUM_CLASSES
    _, min_eps = get_attack("minimal", eps=1e-6, search_steps=2).minimize(model, x, wrong)
    assert min_eps[0] == 0
    assert torch.isinf(min_eps[1:]).all()
    assert accuracy_from_min_eps(min_eps, [0.0, 0.5]) == [(len(y) - 1) / len(y)] * 2


def test_targeted_success_rises_with_eps_and_iterations(model, batch):
    x, y = batch
    target = (y + 2) % NUM_CLASSES
    epsilons = [0.002, 0.01, 0.05]
    rates = sweep(PGD(steps=10), model, x, y, epsilons, target=target, worst_case=False)
    success = rates.success_rate()
    assert success == sorted(success) and success[-1] > success[0]
    by_steps = []
    for steps in (1, 3, 20):
        adv = PGD(eps=0.02, steps=steps, rel_stepsize=2.5 / 20)(model, x, y, target)
        with torch.no_grad():
            by_steps.append(float((model(adv).argmax(1) == target).float().mean()))
    assert by_steps == sorted(by_steps) and by_steps[-1] > by_steps[0]


def test_sweep_dataset_matches_one_big_sweep(model, batch):
    x, y = batch
    attack = PGD(steps=3, random_start=False)
    whole = sweep(attack, model, x, y, [0.01, 0.03])
    batched = sweep_dataset(attack, model, x, y, [0.01, 0.03], batch_size=5)
    assert torch.equal(batched.success, whole.success)
    for a, b in zip(batched.adversarials, whole.adversarials, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert torch.equal(batched.clean_pred, whole.clean_pred)


def test_sweep_errors(model, batch):
    x, y = batch
    with pytest.raises(UserError, match="cannot be swept"):
        sweep(make_attack("filter"), model, x, y, [0.1], target=0)
    with pytest.raises(UserError, match="empty"):
        sweep(FGSM(), model, x, y, [])
    for eps in (-0.1, 1.5, math.nan):
        with pytest.raises(UserError, match=r"fgsm\.eps"):
            sweep(FGSM(), model, x, y, [0.1, eps])
    with pytest.raises(UserError, match="y must have shape"):
        sweep(FGSM(), model, x, y[:3], [0.1])
    empty = sweep(FGSM(), model, x[:0], y[:0], [0.1, 0.2])
    assert empty.success.shape == (2, 0)


@pytest.mark.parametrize("name", BOUNDED)
def test_batch_size_caps_what_the_model_sees(name, model, batch):
    x, y = batch
    attack = make_attack(name)
    epsilons = EPSILONS[attack.norm][:3]
    for keep in (True, False):
        counting = CountingModel(model).eval()
        capped = sweep(attack, counting, x, y, epsilons, keep_adversarials=keep, batch_size=5)
        assert max(n for n, _ in counting.calls) <= 5
        whole = sweep(attack, model, x, y, epsilons, keep_adversarials=keep)
        if name in ("fgsm", "sign-noise", "gaussian-noise", "ifgsm", "mifgsm") and keep:
            assert torch.equal(capped.success, whole.success)  # deterministic per sample


def test_streaming_refills_the_window(model, batch):
    """Early-stopped samples give their slot to the next one: batches stay full but the tail."""
    x, y = batch
    x, y = torch.cat([x] * 4), torch.cat([y] * 4)  # 48 images
    counting = CountingModel(model).eval()
    attack = PGD(steps=10, restarts=2)
    streamed = sweep(attack, counting, x, y, [0.01], keep_adversarials=False, batch_size=8)
    sizes = [n for n, needs_grad in counting.calls if needs_grad]
    assert max(sizes) == 8 and sizes.count(8) >= len(sizes) / 2
    full = sweep(attack, model, x, y, [0.01], keep_adversarials=True, batch_size=8)
    assert streamed.accuracy()[0] <= full.accuracy()[0]
    assert streamed.images_forwarded < full.images_forwarded


@pytest.mark.parametrize("size", [12, 32, 96, 147, 148, 224, 512, 2048])
@pytest.mark.parametrize("batch_size", [1, 16, 64, 300])
def test_streamed_chunks_are_whole_batches_within_the_byte_cap(size, batch_size):
    shape = (10_000, 3, size, size)
    assert chunk_size(shape, batch_size, keep_adversarials=True) == batch_size
    chunk = chunk_size(shape, batch_size, keep_adversarials=False)
    windows, rest = divmod(chunk, batch_size)
    assert rest == 0 and 1 <= windows <= STREAM_WINDOWS
    pixel_bytes = chunk * 3 * size * size * 4
    assert pixel_bytes <= STREAM_CHUNK_BYTES or windows == 1  # one batch is never split
    if 8 * batch_size * 3 * size * size * 4 <= STREAM_CHUNK_BYTES:  # small images: as before
        assert windows == STREAM_WINDOWS


def test_streaming_over_rows_equals_streaming_their_copy(model, batch):
    """A streamed sweep reads each sample from the chunk as it enters a window; the result
    equals attacking a copy of just those samples (what it did before)."""
    x, y = batch
    attack = PGD(steps=4, restarts=2, seed=3)
    rows = torch.tensor([5, 0, 7, 2, 9, 1])
    eps = attack._eps_tensor(x, 0.03)
    with attack._session(model, x, y, None) as whole:
        adv, pred = attack._attack(whole, eps[rows], attack._generator(x.device), True, 4, rows)
    with attack._session(model, x[rows], y[rows], None) as part:
        adv_copy, pred_copy = attack._attack(part, eps[rows], attack._generator(x.device), True, 4)
    assert torch.equal(adv, adv_copy) and torch.equal(pred, pred_copy)
