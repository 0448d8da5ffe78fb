"""`CTRModel.init_new_users`: initial E^UDG rows for users without a trained row."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from udg_fast import models
from udg_fast.coldstart import MetaGenerator, init_new_users, user_profiles
from udg_fast.models import ModelError

from .conftest import TINY_HP


def _model(schema, name="deepfm", **kw):
    torch.manual_seed(0)
    return models.build(name, schema, udg=True, **{**TINY_HP, **kw})


def _request(ds, user, n=5):
    """n rows of the test split, re-addressed to `user`."""
    b = next(ds.test.batches(n))
    b = dict(b)
    b["user_id"] = torch.full((n,), user, dtype=torch.long)
    return b


@pytest.mark.parametrize("with_generator", [False, True])
def test_only_the_new_users_rows_change(skewed, with_generator):
    model = _model(skewed.schema)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = torch.tensor([3, 7, 20])
    prof = user_profiles(skewed, skewed.schema)
    gen = MetaGenerator.for_model(model) if with_generator else None
    if gen is not None:
        with torch.no_grad():
            gen.linear.weight.normal_(0, 0.5)
    written = model.init_new_users(new, prof[new], generator=gen, seed=0)
    assert torch.equal(written, new)
    after = model.state_dict()
    for k, v in after.items():
        if k != "udg_embedding.weight":
            assert torch.equal(v, before[k]), f"{k} changed"
    W0, W1 = before["udg_embedding.weight"], after["udg_embedding.weight"]
    others = torch.ones(len(W0), dtype=torch.bool)
    others[new] = False
    assert torch.equal(W1[others], W0[others])
    assert not torch.equal(W1[new], W0[new])
    if gen is not None:
        torch.testing.assert_close(W1[new], gen(prof[new]))
    else:  # a fresh draw from the table's own N(0, std²), std = embed_init_std = 0.01
        assert 0.001 < float(W1[new].std()) < 0.05


def test_random_rows_are_seeded(skewed):
    a, b = _model(skewed.schema), _model(skewed.schema)
    a.init_new_users([4, 5], seed=3)
    b.init_new_users([4, 5], seed=3)
    assert torch.equal(a.udg_embedding.weight, b.udg_embedding.weight)


def test_trained_users_are_never_overwritten(skewed):
    model = _model(skewed.schema)
    W0 = model.udg_embedding.weight.detach().clone()
    written = init_new_users(model, [2, 3, 4], trained_users=[3], seed=0)
    assert written.tolist() == [2, 4]
    W1 = model.udg_embedding.weight.detach()
    assert torch.equal(W1[3], W0[3]) and not torch.equal(W1[2], W0[2])


@pytest.mark.parametrize("with_generator", [False, True])
@pytest.mark.parametrize("name", ["wdl", "pnn"])
def test_unseen_user_beyond_the_table_is_scored(skewed, name, with_generator):
    model = _model(skewed.schema, name)
    n_users = skewed.schema.vocab_size("user_id")
    W0 = model.udg_embedding.weight.detach().clone()
    shared = {k: v.clone() for k, v in model.state_dict().items() if "user_id" not in k and "udg_embedding" not in k}
    new = n_users + 4                        # an id the data never had
    gen = MetaGenerator.for_model(model) if with_generator else None
    model.init_new_users([new], torch.tensor([[2, 1, 3]]), generator=gen, seed=0)
    assert model.udg_embedding.num_embeddings == new + 1
    assert model.schema.vocab_size("user_id") == new + 1
    assert torch.equal(model.udg_embedding.weight[:n_users], W0)          # old rows kept
    for k, v in model.state_dict().items():
        if k in shared:
            assert torch.equal(v, shared[k]), k
    p = model.score(_request(skewed, new))
    assert p.shape == (5,) and torch.isfinite(p).all()
    # the new row is used (not mapped to the padding id): changing it changes the scores
    with torch.no_grad():
        model.udg_embedding.weight[new] += 1.0
    assert not torch.allclose(model.score(_request(skewed, new)), p)


def test_unseen_user_without_init_is_still_scored(skewed):
    model = _model(skewed.schema)
    p = model.score(_request(skewed, skewed.schema.vocab_size("user_id") + 10))   # padding id 0
    assert torch.isfinite(p).all()


def test_bad_init_input(skewed):
    model = _model(skewed.schema)
    gen = MetaGenerator.for_model(model)
    with pytest.raises(ModelError, match="needs the users' profiles"):
        model.init_new_users([3], generator=gen)
    with pytest.raises(ModelError, match=">= 1"):
        model.init_new_users([0, 3])
    with pytest.raises(ModelError, match="duplicates"):
        model.init_new_users([3, 3])
    with pytest.raises(ModelError, match=r"profiles must be \[n, F\]"):
        model.init_new_users([3, 4], torch.tensor([[1, 1, 1]]), generator=gen)
    with pytest.raises(ModelError, match="profiles must hold integer ids, got torch.float"):
        model.init_new_users([3], [[1.5, 1, 1]], generator=gen)
    with pytest.raises(ModelError, match="user_ids must be integer ids, got torch.float"):
        model.init_new_users([3.7])  # was truncated to 3, overwriting user 3's row
    rows = model.udg_embedding.num_embeddings
    with pytest.raises(ModelError, match=r"user id 1000000000 would grow the user tables .* map external ids"):
        model.init_new_users([10**9])  # used to allocate until the process was killed
    assert model.udg_embedding.num_embeddings == rows
    base = models.build("pnn", skewed.schema, udg=False, **TINY_HP)
    with pytest.raises(ModelError, match="UDG model"):
        base.init_new_users([3])
    assert np.isfinite(model.udg_embedding.weight.detach().numpy()).all()
