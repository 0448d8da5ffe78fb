"""The five models with and without UDG: learning, masking, gates, UDG hooks, parameter counts,
DIN's attention trick, DIEN's auxiliary loss, bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udg_fast import models, train
from udg_fast.models import ModelError
from udg_fast.models.din import AttentionUnit

from .conftest import ALL_VARIANTS, tiny_hp

HIST = ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat")


def _build(name, schema, udg=False, seed=0, **kw):
    torch.manual_seed(seed)
    return models.build(name, schema, udg=udg, **tiny_hp(name, **kw))


# ---- every variant learns ---------------------------------------------------------------------

@pytest.mark.parametrize("name,udg", ALL_VARIANTS)
def test_one_epoch_lowers_the_loss(synth, name, udg):
    model = _build(name, synth.schema, udg)
    before = train.evaluate_split(model, synth.train)["logloss"]
    result = train.fit(model, synth, train.TrainConfig(epochs=1, batch_size=64, lr=1e-2, progress=False),
                       log=lambda s: None)
    after = train.evaluate_split(model, synth.train)["logloss"]
    assert after < before - 0.01, (before, after)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert set(result["test"]) == {"auc", "logloss", "rmse", "rig", "gauc"}


# ---- masking ----------------------------------------------------------------------------------

def _garbage_in_padding(schema, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    T = batch["hist_item"].shape[1]
    pad = torch.arange(T) >= batch["hist_len"].unsqueeze(1)
    assert pad.any()
    for f in HIST:
        junk = torch.randint(1, schema.vocab_size(f), batch[f].shape, generator=g)
        out[f] = torch.where(pad, junk, batch[f])
    return out


@pytest.mark.parametrize("name,udg", ALL_VARIANTS)
def test_padded_history_steps_do_not_change_the_output(synth, batch, name, udg):
    model = _build(name, synth.schema, udg).eval()
    noisy = _garbage_in_padding(synth.schema, batch)
    with torch.no_grad():
        torch.testing.assert_close(model(noisy), model(batch), rtol=0, atol=1e-6)
    if name == "dien":  # the auxiliary loss never scores a padded step either
        model.train()
        torch.testing.assert_close(model.loss(noisy)[0], model.loss(batch)[0], rtol=0, atol=1e-6)


def test_empty_histories_give_finite_outputs(synth, batch):
    empty = dict(batch, hist_len=torch.zeros_like(batch["hist_len"]))
    for name in models.MODELS:
        for norm in ("none", "softmax", "sigmoid") if name in ("din", "dien") else (None,):
            kw = {"att_norm": norm} if norm else {}
            model = _build(name, synth.schema, True, **kw).train()
            loss, logits = model.loss(empty)
            assert torch.isfinite(logits).all() and torch.isfinite(loss), (name, norm)


# ---- UDG: gates, hooks, equality with the base model ------------------------------------------

@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_gate_is_applied(synth, batch, name):
    model = _build(name, synth.schema, True).eval()
    y0 = model(batch).detach()
    assert len(model.gates.fc3) == len(model.mlp.layers)  # one gate per layer, output layer included
    for layer, fc in enumerate(model.gates.fc3):
        saved = fc.bias.detach().clone()
        with torch.no_grad():
            fc.bias.add_(2.0)
        y = model(batch).detach()
        with torch.no_grad():
            fc.bias.copy_(saved)
        assert (y - y0).abs().max() > 1e-5, f"{name}: the gate of layer {layer} changes nothing"
    # E^UDG reaches the prediction
    with torch.no_grad():
        saved = model.udg_embedding.weight.detach().clone()
        model.udg_embedding.weight[1:].normal_(0, 0.5)
    assert (model(batch).detach() - y0).abs().max() > 1e-5
    with torch.no_grad():
        model.udg_embedding.weight.copy_(saved)
    torch.testing.assert_close(model(batch), y0, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_open_gates_reproduce_the_base_model(synth, batch, name):
    base = _build(name, synth.schema, False, seed=5).eval()
    udg = _build(name, synth.schema, True, seed=5).eval()
    # the UDG modules are created after the shared ones: same seed, same shared weights
    shared = base.state_dict()
    own = udg.state_dict()
    assert set(shared) < set(own)
    for k, v in shared.items():
        assert torch.equal(v, own[k]), k
    y_base = base(batch)
    with udg.gates_bypassed():                       # the same code path, gate_logits=None
        torch.testing.assert_close(udg(batch), y_base, rtol=0, atol=0)
    assert udg.bypass_gates is False
    # from another initialisation, loading the base weights gives the same function
    other = _build(name, synth.schema, True, seed=9).eval()
    missing, unexpected = other.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("udg_embedding", "gates")) for k in missing)
    # and through the fused gated kernel: a gate logit of +inf is σ = 1 exactly (γ = 1)
    with torch.no_grad():
        for fc in other.gates.fc3:
            fc.bias.fill_(float("inf"))
    torch.testing.assert_close(other(batch), y_base, rtol=1e-5, atol=1e-6)


def test_udg_embedding_override_is_differentiable(synth, batch):
    model = _build("din", synth.schema, True).eval()
    e = model.udg_user_embedding(batch)
    assert e.shape == (len(batch["user_id"]), model.udg_dim)
    torch.testing.assert_close(model(batch, udg_emb=e), model(batch), rtol=0, atol=0)
    z = torch.randn_like(e, requires_grad=True)
    out = model(batch, udg_emb=z)
    assert (out - model(batch)).abs().max() > 1e-5
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ModelError, match="udg_emb must be"):
        model(batch, udg_emb=z[:, :-1])
    with pytest.raises(ModelError, match="not a UDG model"):
        _build("din", synth.schema, False).udg_user_embedding(batch)


def test_official_gate_inputs_hold_the_profile_fixed(synth, batch):
    model = _build("wdl", synth.schema, True, gate_inputs="official")
    n_profile = len(synth.schema.profile_fields)
    assert model.gates.in_dim == model.udg_dim + 4 * n_profile
    model.loss(batch)[0].backward()
    assert model.udg_embedding.weight.grad.abs().sum() > 0


def test_gate_scale_reaches_every_layer(synth):
    model = _build("pnn", synth.schema, True, gate_scale=2.0)
    assert [layer.gate_scale for layer in model.mlp.layers] == [2.0] * len(model.mlp.layers)


# ---- parameter counts -------------------------------------------------------------------------

def test_parameter_counts_match_a_hand_count(synth):
    s = synth.schema
    # vocabularies (+1 padding id): user 61, item 81, cat 7, age 7, gender 3, occupation 11 → 170 ids
    assert [s.vocab_size(f) for f in ("user_id", "item_id", "item_cat", "age", "gender", "occupation")] == \
        [61, 81, 7, 7, 3, 11]
    d = 4
    emb = 170 * d                                        # one table per field (history shares item/cat)
    mlp_in = 2 * d + 2 * d + 4 * d                       # e_mid (pooled hist) + e_item + e_user = 32
    mlp = (32 * 8 + 8) + (8 * 4 + 4) + (4 * 1 + 1)       # 32 → 8 → 4 → 1
    assert mlp_in == 32
    wide = 170 + 1                                       # one weight per id + bias
    assert models.count_parameters(_build("wdl", s)) == emb + wide + mlp == 1156
    assert models.count_parameters(_build("deepfm", s)) == 1156     # FM adds no parameters
    # UDG: E^UDG (61 × 4) + 3 gate networks on u = [e_item 8, e_behv 8, e_UDG 4] = 20, hidden 20
    gates = 3 * (20 * 20 + 20) + 3 * (20 * 20 + 20) + (20 * 32 + 32) + (20 * 8 + 8) + (20 * 4 + 4)
    assert models.count_parameters(_build("wdl", s, True)) == 1156 + 61 * 4 + gates == 4844
    # DIN: attention unit 4·8 → 8 → 1
    assert models.count_parameters(_build("din", s)) == emb + (32 * 8 + 8) + (8 + 1) + mlp == 1258
    # PNN: 8 fields → 28 inner products join the MLP input
    pnn = emb + ((32 + 28) * 8 + 8) + (8 * 4 + 4) + 5
    assert models.count_parameters(_build("pnn", s)) == pnn
    assert models.count_parameters(_build("pnn", s, product="outer")) == pnn + 28 * d * d
    # Table 3's control: the base model with a doubled embedding size is one flag
    assert models.count_parameters(_build("wdl", s, embed_dim=8)) == 170 * 8 + wide + (64 * 8 + 8) + 36 + 5 == 2092


# ---- DIN's attention: the factored first layer is exact ---------------------------------------

@pytest.mark.parametrize("activation", ["sigmoid", "relu", "prelu"])
def test_attention_trick_equals_the_naive_concat(activation):
    torch.manual_seed(0)
    B, T, D = 7, 13, 6
    unit = AttentionUnit(D, (11, 5), activation).double()
    q = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([0, 1, 13, 5, 12, 3, 7])
    mask = torch.arange(T) < lens.unsqueeze(1)
    ref = unit.forward_naive(q, k)
    w = torch.randn(B, T, dtype=torch.float64)
    grads_ref = torch.autograd.grad((ref * mask * w).sum(), [q, k, *unit.parameters()])
    for m in (None, mask):
        out = unit(q, k, m)
        torch.testing.assert_close(out * mask, ref * mask)
        if m is not None:
            assert (out[~mask] == 0).all()
        grads = torch.autograd.grad((out * mask * w).sum(), [q, k, *unit.parameters()])
        for name, a, b in zip(["q", "k"] + [n for n, _ in unit.named_parameters()], grads, grads_ref):
            torch.testing.assert_close(a, b, msg=lambda s, name=name: f"d{name}: {s}")


# ---- the history pooling: e_behv computed in DIN's attention pass -------------------------------

@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_pool_with_behv_equals_separate_poolings(synth, batch, pooling):
    """`Embedded.pool(w, with_behv=True)` (DIN + UDG: one bmm for the attention pooling and e_behv)
    gives both poolings and every embedding gradient as two separate masked sums do; e_behv is not
    computed twice, and the base DIN never computes it."""
    model = _build("din", synth.schema, udg=True, pooling=pooling).double()
    e = model.embed(batch)
    w = torch.randn(e.mask.shape, dtype=torch.float64) * e.mask
    out = e.pool(w, with_behv=True)
    behv = e.behv
    assert e.pool(w, with_behv=True) is not None and e.behv is behv  # computed once
    valid = e.mask.unsqueeze(-1).to(e.hist.dtype)
    want_out = (w.unsqueeze(-1) * e.hist * valid).sum(1)
    n = e.lengths.clamp_min(1).unsqueeze(1).to(e.hist.dtype) if pooling == "mean" else 1.0
    want_behv = ((e.hist * valid).sum(1) / n).view_as(behv)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(behv, want_behv)
    g1, g2 = torch.randn_like(out), torch.randn_like(behv)
    params = [model.embedding.table(f).weight for f in ("hist_item", "hist_cat")]
    got = torch.autograd.grad((out * g1).sum() + (behv * g2).sum(), params, retain_graph=True)
    want = torch.autograd.grad((want_out * g1).sum() + (want_behv * g2).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    base = _build("din", synth.schema).double()
    e0 = base.embed(batch)
    base.middle(e0, batch, aux=False)
    assert e0._behv is None and not base.gates_read_behv and model.gates_read_behv


# ---- DIEN's auxiliary loss --------------------------------------------------------------------

def test_dien_auxiliary_loss_matches_a_loop(synth, batch):
    model = _build("dien", synth.schema, False, aux_alpha=1.0).train()
    e = model.embed(batch)
    h, _ = model.extractor(e.hist, lengths=e.lengths)
    aux = model.aux_net
    neg = model.embed_steps(batch, model.neg_fields)

    def p(hv, ev):  # the auxiliary network, layer by layer, with its output layer
        a = torch.sigmoid(aux.fc1(torch.cat([hv, ev])))
        for fc in aux.fcs:
            a = torch.sigmoid(fc(a))
        return aux.out(a).squeeze(-1)

    pos_terms, neg_terms = [], []
    for b in range(len(batch["hist_len"])):
        for t in range(int(batch["hist_len"][b]) - 1):       # pairs (t, t+1) inside the history
            pos_terms.append(F.softplus(-p(h[b, t], e.hist[b, t + 1])))
            neg_terms.append(F.softplus(p(h[b, t], neg[b, t + 1])))
    expected = 0.5 * (torch.stack(pos_terms).mean() + torch.stack(neg_terms).mean())
    _, aux_loss = model.middle(e, batch, aux=True)
    torch.testing.assert_close(aux_loss, expected, rtol=1e-5, atol=1e-6)
    # eval mode: no auxiliary loss, and no negative history needed
    model.eval()
    no_neg = {k: v for k, v in batch.items() if not k.startswith("neg_")}
    model.loss(no_neg)


# ---- autocast ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pnn", "din", "dien"])
def test_udg_model_runs_under_cpu_autocast(synth, batch, name):
    """bf16 autocast around fused ops whose CPU kernels compute in the inputs' fp32 (the C++ ops
    keep autocast out of their own ATen calls: din_attention's q term once went bf16)."""
    model = _build(name, synth.schema, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = model.loss(batch)
    loss.backward()
    assert torch.isfinite(logits.float()).all()


# ---- bad input --------------------------------------------------------------------------------

def test_unknown_model_and_hyper_parameter(synth):
    with pytest.raises(ModelError, match=r"unknown model 'xgboost' \(models: pnn, deepfm, wdl, din, dien\)"):
        models.build("xgboost", synth.schema)
    with pytest.raises(ModelError, match=r"unknown hyper-parameter\(s\) 'att_hiden'.*valid: .*att_hidden"):
        models.build("din", synth.schema, att_hiden=(8,))
    with pytest.raises(ModelError, match="gate_inputs must be one of"):
        models.build("din", synth.schema, udg=True, gate_inputs="mine")
    with pytest.raises(ModelError, match="product must be one of"):
        models.build("pnn", synth.schema, product="kernel")
    with pytest.raises(ModelError, match="schema must be"):
        models.build("din", {"user_id": 3})


@pytest.mark.parametrize("name,hp,match", [
    ("pnn", {"hidden": "abc"}, "hidden must be a list of positive ints, got 'abc'"),
    ("pnn", {"hidden": None}, "hidden must be a list of positive ints, got None"),
    ("pnn", {"hidden": (8.5,)}, r"hidden must be a list of positive ints, got \[8.5\]"),
    ("din", {"att_hidden": ()}, r"att_hidden must be a list of positive ints \(at least one\)"),
    ("dien", {"aux_hidden": []}, r"aux_hidden must be a list of positive ints \(at least one\)"),
    ("pnn", {"embed_dim": 4.7}, "embed_dim must be a positive int, got 4.7"),
    ("pnn", {"embed_dim": "8"}, "embed_dim must be a positive int, got '8'"),
    ("pnn", {"gate_hidden": -1}, "gate_hidden must be a positive int or None, got -1"),
    ("pnn", {"udg_dim": 0}, "udg_dim must be a positive int or None, got 0"),
    ("pnn", {"embed_init_std": -1}, "embed_init_std must be a number >= 0, got -1"),
    ("pnn", {"l2_embedding": "a"}, "l2_embedding must be a number >= 0, got 'a'"),
    ("pnn", {"gate_scale": "x"}, "gate_scale must be a number > 0, got 'x'"),
    ("pnn", {"gate_scale": 0}, "gate_scale must be a number > 0, got 0"),
    ("dien", {"aux_alpha": float("nan")}, "aux_alpha must be a number >= 0, got nan"),
    ("din", {"att_norm": 3}, "att_norm must be a string, got 3"),
])
def test_bad_hyper_parameters_are_named(synth, name, hp, match):
    with pytest.raises(ModelError, match=f"{name}: hyper-parameter {match}"):
        models.build(name, synth.schema, udg=True, **hp)


def test_hyper_parameters_from_numpy_and_ints_are_plain(synth):
    import numpy as np

    m = models.build("din", synth.schema, udg=True, embed_dim=np.int64(4), hidden=np.array([8, 4]), att_hidden=16,
                     gate_scale=np.float32(2), embed_init_std=0)
    assert m.hparams["hidden"] == [8, 4] and m.hparams["att_hidden"] == [16]
    assert type(m.hparams["embed_dim"]) is int and type(m.hparams["gate_scale"]) is float
    with pytest.raises(ModelError, match="udg must be True or False, got 'no'"):
        models.build("din", synth.schema, udg="no")


@pytest.mark.parametrize("name", ["pnn", "din", "dien"])
def test_bad_batches_are_named(synth, batch, name):
    model = _build(name, synth.schema, True)
    T = batch["hist_item"].shape[1]
    cases = [
        (dict(batch, item_id=batch["item_id"][:5]), "batch fields 'user_id' and 'item_id' have 64 and 5 rows"),
        (dict(batch, hist_cat=batch["hist_cat"][:, :-1]), f"history fields 'hist_item' and 'hist_cat' have {T} and {T - 1}"),
        (dict(batch, item_id=batch["item_id"].float()), "batch field 'item_id' must hold integer ids, got torch.float32"),
        (dict(batch, item_id=batch["item_id"].tolist()), "batch field 'item_id' must be a torch.Tensor, got list"),
        (dict(batch, hist_len=batch["hist_len"][:, None]), r"batch field 'hist_len' must be \[B\], got shape \(64, 1\)"),
        (dict(batch, hist_len=batch["hist_len"] + T + 1), f"hist_len must be in \\[0, T = {T}\\], got"),
        (dict(batch, item_id=batch["item_id"] + 10**6), r"batch field 'item_id' holds id \d+, outside its vocabulary"),
        ({k: v[:0] for k, v in batch.items()}, r"the batch is empty \(0 rows\)"),
    ]
    for b, match in cases:
        with pytest.raises(ModelError, match=f"{name}: {match}"):
            model.loss(b)
    # score: unknown ids and long hist_len are mapped, no rows give no scores
    assert model.score({k: v[:0] for k, v in batch.items()}).shape == (0,)
    assert torch.isfinite(model.score(dict(batch, hist_len=batch["hist_len"] + T + 1))).all()


def test_a_batch_missing_a_field_names_it(synth, batch):
    model = _build("din", synth.schema, True)
    with pytest.raises(ModelError, match=r"lacks field\(s\) 'hist_len'"):
        model({k: v for k, v in batch.items() if k != "hist_len"})
    with pytest.raises(ModelError, match=r"lacks field\(s\) 'occupation'"):
        model.score({k: v for k, v in batch.items() if k != "occupation"})
    with pytest.raises(ModelError, match=r"lacks field\(s\) 'label'"):
        model.loss({k: v for k, v in batch.items() if k != "label"})
    dien = _build("dien", synth.schema).train()
    with pytest.raises(ModelError, match=r"'neg_hist_item', 'neg_hist_cat'"):
        dien.loss({k: v for k, v in batch.items() if not k.startswith("neg_")})


# ---- the embedding lookup's backward ----------------------------------------------------------

def test_lookup_backward_equals_nn_embedding():
    """`lookup` (its backward the op embedding_backward, on every backend) gives nn.Embedding's
    gradient at 1 and 2 threads: repeated ids summed, the padding row 0, any id shape; and its
    backward is differentiable (cold start's meta-gradient). The op's own tests:
    tests/ops/test_embedding_backward.py."""
    import udg_fast
    from udg_fast.models.embedding import _Lookup, lookup

    torch.manual_seed(0)
    table = torch.nn.Embedding(13, 5, padding_idx=0).double()
    old_threads = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for shape in [(7,), (4, 9), (2, 3, 6)]:
                ids = torch.randint(0, 13, shape)
                ids.view(-1)[:3] = torch.tensor([0, 4, 4])  # padding and a repeated id
                g = torch.randn(*shape, 5, dtype=torch.float64)
                out = lookup(table, ids)
                torch.testing.assert_close(out, table(ids), rtol=0, atol=0)
                got = torch.autograd.grad(out, table.weight, g)[0]
                want = torch.autograd.grad(table(ids), table.weight, g)[0]
                torch.testing.assert_close(got, want, msg=lambda m: f"{threads} thread(s): {m}")
                assert (got[0] == 0).all()
    finally:
        torch.set_num_threads(old_threads)
    w = table.weight.detach().clone().requires_grad_(True)
    ids = torch.randint(0, 13, (4, 6))
    for backend in ("reference", None):
        with udg_fast.use_backend(backend):
            assert torch.autograd.gradgradcheck(lambda w: _Lookup.apply(w, ids, 0) ** 2, (w,))
