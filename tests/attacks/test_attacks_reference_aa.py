"""APGD, APGD-T, Square and FAB-T agree with plain reference loops written here (same seed).

The references follow the papers / the AutoAttack package's algorithms step by step, on the
whole batch, without early stopping, batching tricks or in-place updates.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, make_model

from robustlab.attacks import get_attack
from robustlab.errors import UserError


def _value_and_grad(model, x, loss_fn):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad, logits.detach(), loss.detach()


def _dlr(logits, y):
    ordered, order = logits.sort(1, descending=True)
    z_y = logits[torch.arange(len(y)), y]
    other = torch.where(order[:, 0] == y, ordered[:, 1], ordered[:, 0])
    return -(z_y - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def _targeted_dlr(logits, y, aim):
    ordered = logits.sort(1, descending=True).values
    rows = torch.arange(len(y))
    return -(logits[rows, y] - logits[rows, aim]) / (
        ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12
    )


def _clip_linf(z, x, eps):
    return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)


def reference_apgd(model, x, y, eps, steps, loss_fn, generator, rho=0.75):
    """Algorithm 1 of Croce & Hein (2020), Linf, as the AutoAttack package runs it."""
    batch = x.shape[0]
    noise = torch.rand(x.shape, generator=generator) * 2 - 1
    x_adv = (x + eps * noise / noise.flatten(1).abs().amax(1).view(-1, 1, 1, 1)).clamp(0, 1)
    grad, logits, loss = _value_and_grad(model, x_adv, loss_fn)
    fooled = logits.argmax(1) != y
    x_fool, x_best, grad_best, best = x_adv.clone(), x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full((batch, 1, 1, 1), 2 * eps)
    x_old = x_adv.clone()
    window, counter = max(int(0.22 * steps), 1), 0
    losses = torch.zeros(steps, batch)
    best_at_check, reduced = best.clone(), torch.ones(batch, dtype=torch.bool)
    for i in range(steps):
        move, x_old = x_adv - x_old, x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        z = _clip_linf(x_adv + step * grad.sign(), x, eps)
        x_adv = _clip_linf(x_adv + (z - x_adv) * a + move * (1 - a), x, eps)
        grad, logits, loss = _value_and_grad(model, x_adv, loss_fn)
        hit = logits.argmax(1) != y
        x_fool[hit], fooled = x_adv[hit], fooled | hit
        losses[i] = loss
        up = loss > best
        x_best[up], grad_best[up], best[up] = x_adv[up], grad[up], loss[up]
        counter += 1
        if counter == window:
            rises = sum((losses[i - j] > losses[i - j - 1]).float() for j in range(window))
            halve = (rises <= window * rho) | (~reduced & (best_at_check >= best))
            reduced, best_at_check = halve, best.clone()
            step[halve] /= 2
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
            window, counter = max(window - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)), 0
    return torch.where(fooled.view(-1, 1, 1, 1), x_fool, x_best), fooled, best


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_reference(loss, model, batch):
    x, y = batch
    eps, steps = 0.03, 20
    loss_fn = (
        (lambda z: F.cross_entropy(z, y, reduction="none"))
        if loss == "ce"
        else (lambda z: _dlr(z, y))
    )
    expected, _, _ = reference_apgd(
        model, x, y, eps, steps, loss_fn, torch.Generator().manual_seed(7)
    )
    actual = get_attack("apgd", eps=eps, steps=steps, loss=loss, seed=7)(model, x, y)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_apgd_targeted_matches_reference(batch):
    model = make_model(classes=6)
    x, _ = batch
    with torch.no_grad():
        clean = model(x)
    y = clean.argmax(1)
    eps, steps, top_k = 0.02, 10, 3
    generator = torch.Generator().manual_seed(2)
    out, done = x.clone(), torch.zeros_like(y, dtype=torch.bool)
    best = torch.full(y.shape, -math.inf)
    ranked = clean.argsort(1, descending=True)
    for rank in range(1, top_k + 1):
        todo = (~done).nonzero().squeeze(1)
        if not todo.numel():
            break
        sub_y, aim = y[todo], ranked[todo, rank]

        def loss_fn(z, sub_y=sub_y, aim=aim):
            return _targeted_dlr(z, sub_y, aim)

        adv, hit, loss = reference_apgd(model, x[todo], sub_y, eps, steps, loss_fn, generator)
        loss = loss.masked_fill(hit, math.inf)
        take = hit | (loss > best[todo])
        out[todo[take]], best[todo[take]], done[todo[take]] = adv[take], loss[take], hit[take]
    actual = get_attack("apgd-t", eps=eps, steps=steps, top_k=top_k, seed=2)(model, x, y)
    torch.testing.assert_close(actual, out, atol=1e-6, rtol=0)


def test_eot_on_a_deterministic_model_is_the_same_attack(model, batch):
    x, y = batch
    plain = get_attack("apgd", eps=0.03, steps=10)(model, x, y)
    assert torch.equal(get_attack("apgd", eps=0.03, steps=10, eot_samples=3)(model, x, y), plain)


_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _margin(logits, y):
    others = logits.clone()
    others[torch.arange(len(y)), y] = -math.inf
    return logits[torch.arange(len(y)), y] - others.amax(1)


class _Counting(torch.nn.Module):
    """Counts the images forwarded through ``inner``."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


def test_square_matches_reference(model, batch):
    """Andriushchenko et al. (2020), Linf, one square per image and query."""
    x, y = batch
    eps, queries, p_init = 0.05, 60, 0.8
    channels, height, width = x.shape[1:]
    generator = torch.Generator().manual_seed(4)
    stripes = torch.randint(0, 2, (x.shape[0], channels, 1, width), generator=generator) * 2 - 1
    best = (x + eps * stripes).clamp(0, 1)
    forwarded = len(x)  # images the reference queries (every candidate, changed or not)
    with torch.no_grad():
        logits = model(best)
        best_loss, pred = _margin(logits, y), logits.argmax(1)
        for query in range(1, queries):
            todo = (pred == y).nonzero().squeeze(1)
            if not todo.numel():
                break
            forwarded += len(todo)
            p = p_init / 2 ** sum(int(query / queries * 10000) > mark for mark in _HALVINGS)
            side = min(max(round(math.sqrt(p * height * width)), 1), height - 1)
            tops = torch.randint(0, height - side + 1, (len(todo), 1), generator=generator)
            lefts = torch.randint(0, width - side + 1, (len(todo), 1), generator=generator)
            signs = torch.randint(0, 2, (len(todo), channels, 1, 1), generator=generator) * 2 - 1
            candidates = best[todo].clone()
            for row, i in enumerate(todo.tolist()):
                top, left = int(tops[row]), int(lefts[row])
                window = (slice(None), slice(top, top + side), slice(left, left + side))
                candidates[row][window] = (x[i] + eps * signs[row])[window]
            candidates = _clip_linf(candidates, x[todo], eps)
            logits = model(candidates)
            loss, new_pred = _margin(logits, y[todo]), logits.argmax(1)
            take = (loss < best_loss[todo]) | (new_pred != y[todo])
            best[todo[take]] = candidates[take]
            best_loss[todo[take]], pred[todo[take]] = loss[take], new_pred[take]
    counted = _Counting(model).eval()
    actual = get_attack("square", eps=eps, queries=queries, seed=4)(counted, x, y)
    torch.testing.assert_close(actual, best, atol=1e-6, rtol=0)
    # a candidate equal to its best point is not queried: the same result for less work
    assert counted.images < forwarded


def _project_by_bisection(t, w, b):
    """Smallest Linf move onto ``w.z = b`` inside [0, 1], one sample at a time, by bisection."""
    moves = []
    for ti, wi, bi in zip(t, w, b, strict=True):
        gap = bi - (wi * ti).sum()
        direction = torch.sign(wi) * torch.sign(gap)
        room = torch.where(direction > 0, 1 - ti, ti)

        def reach(lam, wi=wi, direction=direction, room=room):
            return (wi.abs() * (direction != 0) * room.clamp(max=lam)).sum()

        low, high = 0.0, 1.0
        if reach(high) < gap.abs():
            moves.append(direction * room)
            continue
        for _ in range(80):
            mid = (low + high) / 2
            low, high = (low, mid) if reach(mid) >= gap.abs() else (mid, high)
        moves.append(direction * room.clamp(max=high))
    return torch.stack(moves)


def _fab_step(x1, x0, w, b, alpha_max=0.1, eta=1.05):
    """One FAB move of ``x1`` onto the hyperplane ``w.z = b``, biased towards ``x0``."""
    d1 = _project_by_bisection(x1.flatten(1), w, b).view_as(x1)
    d2 = _project_by_bisection(x0.flatten(1), w, b).view_as(x1)
    a1 = d1.flatten(1).abs().amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    a2 = d2.flatten(1).abs().amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    alpha = (a1 / (a1 + a2)).clamp(0, alpha_max)
    return ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0, 1)


def _reference_fab_run(model, x0, y0, steps, boundary, beta=0.9):
    """One FAB run from the clean image; ``boundary(x1) -> (w, diff)`` linearises it."""
    best, best_norm = x0.clone(), torch.full((len(y0),), math.inf, dtype=x0.dtype)
    x1 = x0.clone()
    for _ in range(steps):
        w, diff = boundary(x1)
        x1 = _fab_step(x1, x0, w, -diff + (w * x1.flatten(1)).sum(1))
        with torch.no_grad():
            fooled = model(x1).argmax(1) != y0
        norms = (x1 - x0).flatten(1).abs().amax(1)
        better = fooled & (norms < best_norm)
        best[better], best_norm[better] = x1[better], norms[better]
        x1[fooled] = x0[fooled] + (x1[fooled] - x0[fooled]) * beta
    return best, best_norm


def _fab_case(batch):
    model = make_model(classes=6).double()
    x = batch[0].double()[:6]
    with torch.no_grad():
        clean = model(x)
    return model, x, clean


def test_fab_matches_reference(batch):
    """Targeted FAB, Linf, as AutoAttack's FAB-T, with a bisection projection (float64)."""
    model, x, clean = _fab_case(batch)
    y = clean.argmax(1)
    eps, steps, top_k = 0.05, 8, 2
    best, best_norm = x.clone(), torch.full((6,), math.inf, dtype=x.dtype)
    ranked = clean.argsort(1, descending=True)
    for rank in range(1, top_k + 1):
        todo = (best_norm > eps).nonzero().squeeze(1)
        if not todo.numel():
            break
        y0, aim = y[todo], ranked[todo, rank]

        def boundary(x1, y0=y0, aim=aim):
            grad, _, diff = _value_and_grad(
                model,
                x1,
                lambda z: z.gather(1, aim[:, None])[:, 0] - z.gather(1, y0[:, None])[:, 0],
            )
            return grad.flatten(1), diff

        found, norms = _reference_fab_run(model, x[todo], y0, steps, boundary)
        better = norms < best_norm[todo]
        best[todo[better]], best_norm[todo[better]] = found[better], norms[better]
    fab = get_attack("fab", eps=eps, steps=steps, top_k=top_k)
    found, min_eps = fab.minimize(model, x, y)
    torch.testing.assert_close(min_eps, best_norm, atol=1e-9, rtol=0)
    torch.testing.assert_close(found, best, atol=1e-9, rtol=0)


def test_untargeted_fab_matches_reference(batch):
    """Untargeted FAB (Croce & Hein 2020, as AutoAttack's 'fab'): each step aims at the class
    whose linearised boundary is closest in Linf, from a Jacobian taken one sample at a time."""
    model, x, clean = _fab_case(batch)
    y = clean.argmax(1)

    def boundary(x1):
        rows = []
        for xi, yi in zip(x1, y, strict=True):
            jac = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], xi).flatten(1)
            with torch.no_grad():
                z = model(xi[None])[0]
            diffs, slopes = z - z[yi], jac - jac[yi]
            distance = diffs.abs() / (slopes.abs().sum(1) + 1e-12)
            distance[yi] = math.inf
            k = int(distance.argmin())
            rows.append((slopes[k], diffs[k]))
        return torch.stack([w for w, _ in rows]), torch.stack([d for _, d in rows])

    best, best_norm = _reference_fab_run(model, x, y, 8, boundary)
    fab = get_attack("fab", eps=0.05, steps=8, targeted=False)
    found, min_eps = fab.minimize(model, x, y)
    assert torch.isfinite(best_norm).any()  # the reference found adversarials to compare
    torch.testing.assert_close(min_eps, best_norm, atol=1e-9, rtol=0)
    torch.testing.assert_close(found, best, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("square", "queries", -5),
        ("square", "queries", 0),
        ("square", "p_init", 0.0),
        ("apgd", "eot_samples", 0),
        ("apgd", "rho", 1.5),
        ("apgd", "loss", "hinge"),
        ("apgd-t", "top_k", 0),
        ("apgd-t", "loss", "ce"),
        ("fab", "top_k", 0),
        ("fab", "eta", 0.5),
        ("autoattack", "version", "fast"),
        ("autoattack", "eot_samples", 0),
        ("autoattack", "queries", -1),
    ],
)
def test_bad_settings_name_the_field(name, field, value):
    with pytest.raises(UserError, match=rf"{name}\.{field}"):
        get_attack(name, **{field: value})


@pytest.mark.parametrize("name", ["apgd-t", "fab"])
def test_top_k_above_the_class_count_is_refused_before_running(name, model, batch):
    x, y = batch
    attack = get_attack(name, steps=2, top_k=NUM_CLASSES)
    with pytest.raises(UserError, match=rf"{name}\.top_k must be <= {NUM_CLASSES - 1}"):
        attack(model, x, y)


def test_targeted_dlr_on_a_two_class_model_says_so(batch):
    x, _ = batch
    model = make_model(classes=2)
    y = model(x).argmax(1)
    with pytest.raises(UserError, match="at least 4 classes"):
        get_attack("apgd-t", steps=2, top_k=1)(model, x, y)
    with pytest.raises(UserError, match="at least 3 classes"):
        get_attack("apgd", steps=2, loss="dlr")(model, x, y)


def test_fab_has_no_l2_version():
    with pytest.raises(UserError, match="unknown attack 'fab-l2'"):
        get_attack("fab-l2")


class _RandomisedModel(torch.nn.Module):
    """Adds fresh Gaussian noise to the input on every forward (a randomised defence)."""

    def __init__(self, inner, sigma=0.2):
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn_like(x))


def test_eot_fgsm_steps_along_the_mean_gradient(model, batch):
    """EOT's gradient is the mean of the gradients of the same noisy passes, in order."""
    x, y = batch
    noisy = _RandomisedModel(model).eval()
    torch.manual_seed(11)
    eot = get_attack("fgsm", eps=0.03, eot_samples=4)(noisy, x, y)
    torch.manual_seed(11)
    grads = [
        _value_and_grad(noisy, x, lambda z: F.cross_entropy(z, y, reduction="none"))[0]
        for _ in range(4)
    ]
    expected = (x + 0.03 * (sum(grads) / 4).sign()).clamp(0, 1)
    assert torch.equal(eot, expected)
    assert not torch.equal((x + 0.03 * grads[0].sign()).clamp(0, 1), expected)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm", "apgd", "apgd-t"])
def test_eot_samples_zero_is_refused(name):
    with pytest.raises(UserError, match=rf"{name}\.eot_samples"):
        get_attack(name, eot_samples=0)


def test_eot_default_is_not_recorded_but_other_values_are():
    assert "eot_samples" not in get_attack("pgd").settings()
    assert get_attack("pgd", eot_samples=5).settings()["eot_samples"] == 5


def test_bpda_restores_the_gradient_of_a_quantiser(model, batch):
    from robustlab.attacks import BPDA

    x, y = batch

    def quantise(t):
        return torch.round(t * 4) / 4  # coarse, so the masking is total

    masked = torch.nn.Sequential()
    masked.forward = lambda t: model(quantise(t))  # type: ignore[method-assign]
    leaf = x.clone().requires_grad_(True)
    F.cross_entropy(masked(leaf), y).backward()
    assert leaf.grad is not None and leaf.grad.abs().max() == 0  # gradient attacks are blind
    wrapped = BPDA(model, quantise).eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(quantise(x)))  # the forward is the real step
    leaf = x.clone().requires_grad_(True)
    F.cross_entropy(wrapped(leaf), y).backward()
    assert leaf.grad.abs().max() > 0  # the straight-through gradient is back


def test_autoattack_on_a_two_class_model_skips_apgd_t_and_says_so(batch):
    from robustlab.attacks import sweep
    from robustlab.evaluation.grade import evaluation_grade

    x, _ = batch
    model = make_model(classes=2)
    y = model(x).argmax(1)
    attack = get_attack("autoattack", eps=0.05, steps=3, queries=10)
    result = sweep(attack, model, x, y, [0.02, 0.05], keep_adversarials=False)
    grade = evaluation_grade(attack, result.stage, classes=2)
    assert not grade["standard_autoattack"]
    assert [m["skipped"] for m in grade["attacks"]] == [False, True, False, False]
    after = grade["robust_after"]
    assert after[1]["robust_accuracy"] == after[0]["robust_accuracy"]  # APGD-T did not run
    assert after[-1]["robust_accuracy"] == result.accuracy()
    assert evaluation_grade(get_attack("autoattack"), classes=10)["standard_autoattack"]


def test_autoattack_plus_runs_the_reference_members_in_order(model, batch):
    """AA+ as the reference package: untargeted FAB after APGD-DLR, then the targeted pair."""
    from robustlab.attacks import sweep
    from robustlab.evaluation.grade import evaluation_grade

    x, y = batch
    attack = get_attack("autoattack", version="plus", eps=0.05, steps=3, queries=10, top_k=2)
    names = ["APGD-CE", "APGD-DLR", "FAB", "Square", "APGD-T", "FAB-T"]
    assert attack.stage_names() == names
    fab = dict(attack.members())["FAB"]
    assert not fab.targeted and fab.restarts == 5
    result = sweep(attack, model, x, y, [0.05], keep_adversarials=True)
    grade = evaluation_grade(attack, result.stage)
    assert not grade["standard_autoattack"]
    after = [row["robust_accuracy"][0] for row in grade["robust_after"]]
    assert after == sorted(after, reverse=True)  # a cascade never gains robust points
    assert after[-1] == result.accuracy()[0]
    assert (result.adversarials[0] - x).abs().max() <= 0.05 + 1e-6
