"""The generator f_meta (Eq. 11) and its training by Algorithm 1."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import udg_fast
from udg_fast import models, train
from udg_fast.coldstart import (ColdStartError, MetaConfig, MetaGenerator, PairSampler, meta_loss, split_halves,
                                split_users, train_generator)
from udg_fast.coldstart.study import hide_profiles

from .conftest import TINY_HP


@pytest.fixture()
def pretrained(skewed):
    """A tiny PNN+UDG with some training (E^UDG rows and gates away from their initialisation)."""
    train.set_seed(0)
    model = models.build("pnn", skewed.schema, udg=True, gate_scale=2.0, **TINY_HP)
    train.fit(model, skewed, train.TrainConfig(epochs=1, lr=1e-2, patience=0, progress=False), log=lambda s: None)
    return model


def _pair(merged, seed=0, users=6, per_user=4):
    us = split_users(merged, 20, 60)
    a, b = split_halves(merged, us.active_rows)
    ia, ib = PairSampler(merged, a, b, users, per_user, seed).next()
    cols = merged.to_torch()
    return ({k: t[torch.from_numpy(ia)] for k, t in cols.items()},
            {k: t[torch.from_numpy(ib)] for k, t in cols.items()})


def test_generator_is_tanh_of_one_hot_profile(skewed):
    torch.manual_seed(0)
    gen = MetaGenerator(skewed.schema, 5)
    assert gen.fields == ("age", "gender", "occupation")
    p = torch.tensor([[1, 2, 3], [0, 1, 10], [99, -1, 4]])   # unknown ids (99, -1) → 0
    x = gen.one_hot(p)
    assert x.shape == (3, sum(gen.vocab)) and torch.equal(x.sum(1), torch.full((3,), 3.0))
    expect = torch.tanh(gen.linear.weight[:, [1, 7 + 2, 7 + 3 + 3]].sum(1) + gen.linear.bias)
    torch.testing.assert_close(gen(p)[0], expect)
    torch.testing.assert_close(gen(p)[2], gen(torch.tensor([[0, 0, 4]]))[0])
    d = {"age": p[:, 0], "gender": p[:, 1], "occupation": p[:, 2]}
    torch.testing.assert_close(gen(d), gen(p))
    with pytest.raises(ColdStartError, match=r"profiles must be \[n, 3\]"):
        gen(torch.tensor([1, 2, 3]))


def test_dataset_without_profile_is_a_clear_error(skewed, pretrained):
    with pytest.raises(ColdStartError, match="no user-profile fields"):
        MetaGenerator(hide_profiles(skewed.schema), 4)
    base = models.build("pnn", skewed.schema, udg=False, **TINY_HP)
    with pytest.raises(ColdStartError, match="udg=True"):
        MetaGenerator.for_model(base)


def test_inner_step_is_differentiable_gradcheck(skewed, merged, pretrained):
    """∇_Θ L_meta, analytic (through e = ê − α ∂L_A/∂ê with create_graph) against finite
    differences, float64. With the fast C++ op the second derivative would silently be zero and
    this check would fail: meta_loss runs on the reference backend."""
    model = pretrained.double().requires_grad_(False)
    base = MetaGenerator.for_model(model).double()
    torch.manual_seed(1)
    with torch.no_grad():
        base.linear.weight.normal_(0, 0.3)
        base.linear.bias.normal_(0, 0.1)
    ba, bb = _pair(merged)

    class Functional:  # the generator as a function of (W_meta, b_meta)
        fields = base.fields

        def __init__(self, w, b):
            self.w, self.b = w, b

        def __call__(self, p):
            return torch.tanh(F.linear(base.one_hot(p), self.w, self.b))

    def f(w, b):
        return meta_loss(model, Functional(w, b), ba, bb, alpha=20.0, gamma=0.1)[0]

    w = base.linear.weight.detach().clone().requires_grad_(True)
    b = base.linear.bias.detach().clone().requires_grad_(True)
    with udg_fast.use_backend("reference"):
        assert torch.autograd.gradcheck(f, (w, b), eps=1e-6, atol=1e-6, rtol=1e-4)


def _theta_grad(model, gen, ba, bb, first_order, gamma=0.1):
    gen.zero_grad(set_to_none=True)
    with udg_fast.use_backend("reference"):
        loss, la, lb = meta_loss(model, gen, ba, bb, alpha=50.0, gamma=gamma, first_order=first_order)
        loss.backward()
    return torch.cat([p.grad.flatten() for p in gen.parameters()])


def test_L_B_reaches_theta_through_e_and_first_order_differs(merged, pretrained):
    """float64, one backend for both, so the only difference is the −α (∂g/∂ê)ᵀ ∂L_B/∂e term
    (1.3·10⁻³ of the gradient here; rounding is ~10⁻¹⁵)."""
    model = pretrained.double().requires_grad_(False)
    torch.manual_seed(0)
    gen = MetaGenerator.for_model(model).double()
    with torch.no_grad():
        gen.linear.weight.normal_(0, 0.3)
    ba, bb = _pair(merged)
    full = _theta_grad(model, gen, ba, bb, first_order=False)
    first = _theta_grad(model, gen, ba, bb, first_order=True)
    only_b = _theta_grad(model, gen, ba, bb, first_order=False, gamma=0.0)   # L_meta = L_B
    assert only_b.abs().sum() > 0, "Θ receives no gradient from L_B"
    assert torch.equal(_theta_grad(model, gen, ba, bb, first_order=False), full)   # deterministic
    rel = float((full - first).norm() / full.norm())
    assert rel > 1e-4, f"the second-order term vanished (relative difference {rel:.2e})"


def test_training_leaves_the_model_bit_identical(merged, pretrained):
    model = pretrained
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    torch.manual_seed(0)
    gen = MetaGenerator.for_model(model)
    theta0 = [p.detach().clone() for p in gen.parameters()]
    us = split_users(merged, 20, 60)
    hist = train_generator(model, gen, merged, MetaConfig(steps=5, users_per_batch=4, samples_per_user=3,
                                                          progress=False), rows=us.active_rows)
    assert len(hist["loss_meta"]) == 5 and all(np.isfinite(hist["loss_meta"]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(gen.parameters(), theta0)), "Θ did not train"


def test_pair_sampler_draws_the_same_users(merged):
    us = split_users(merged, 20, 60)
    a, b = split_halves(merged, us.active_rows)
    s = PairSampler(merged, a, b, 5, 3, seed=0)
    u = merged["user_id"]
    assert len(us.active_users) == 12
    seen = []
    for _ in range(4):
        ia, ib = s.next()
        assert np.isin(ia, a).all() and np.isin(ib, b).all()
        assert np.array_equal(u[ia], u[ib]) and len(np.unique(u[ia])) == 5
        seen.append(set(u[ia].tolist()))
    assert not seen[0] & seen[1]   # a pass over the users (a permutation) before any repeats
    with pytest.raises(ColdStartError, match="same users"):
        PairSampler(merged, a, b[u[b] != u[b][0]], 5, 3)


def test_bad_meta_options():
    with pytest.raises(ColdStartError, match="gamma"):
        MetaConfig(gamma=1.5)
    with pytest.raises(ColdStartError, match="steps"):
        MetaConfig(steps=0)
    with pytest.raises(ColdStartError, match="optimizer"):
        MetaConfig(optimizer="rmsprop")
