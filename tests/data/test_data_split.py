"""Split / Schema / Dataset objects: torch views, minibatches, schema roles."""
from __future__ import annotations

import pytest
import torch

from udg_fast import data
from udg_fast.data.core import Schema


@pytest.fixture(scope="module")
def ds():
    return data.load("synthetic", n_users=30, samples_per_user=15, max_len=8, cache=False)


def test_to_torch_shares_memory(ds):
    t = ds.train.to_torch()
    for k, a in ds.train.arrays.items():
        assert t[k].data_ptr() == a.ctypes.data, k
        assert tuple(t[k].shape) == a.shape
    assert t["hist_item"].dtype == torch.int64 and t["label"].dtype == torch.float32
    assert t["hist_len"].dtype == torch.int64


def test_batches(ds):
    n = len(ds.train)
    sizes = [len(b["label"]) for b in ds.train.batches(32)]
    assert sum(sizes) == n and sizes[:-1] == [32] * (len(sizes) - 1)
    assert len(sizes) == ds.train.num_batches(32)
    assert all(len(b["label"]) == 32 for b in ds.train.batches(32, drop_last=True))
    # unshuffled batches are views of the columns
    first = next(ds.train.batches(16))
    assert first["hist_item"].data_ptr() == ds.train["hist_item"].ctypes.data
    # shuffled: every row exactly once, reproducible by seed, new order for a new seed
    def order(seed):
        return torch.cat([b["timestamp"] * 10_000 + b["user_id"] for b in ds.train.batches(25, shuffle=True, seed=seed)])

    a, b, c = order(0), order(0), order(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    base = torch.from_numpy(ds.train["timestamp"] * 10_000 + ds.train["user_id"])
    assert torch.equal(a.sort().values, base.sort().values)
    # fields subset
    sub = next(ds.train.batches(8, fields=["user_id", "label"]))
    assert set(sub) == {"user_id", "label"}


def test_select_and_repr(ds):
    mask = ds.test["user_id"] == ds.test["user_id"][0]
    one = ds.test.select(mask)
    assert len(one) == int(mask.sum()) and one.fields == ds.test.fields
    assert "samples" in repr(one) and "Dataset(" in repr(ds) and "hist_item" in repr(ds.schema)
    with pytest.raises(KeyError, match="no field 'nope'"):
        ds.train["nope"]
    with pytest.raises(KeyError, match="no split"):
        ds["dev"]


def test_schema_roles_and_roundtrip(ds):
    s = ds.schema
    assert s.user_fields == ("user_id",)
    assert s.item_fields == ("item_id", "item_cat")
    assert s.profile_fields == ("age", "gender", "occupation")
    assert s.history_fields == ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat", "hist_len")
    assert s.sparse_fields == ("user_id", "item_id", "item_cat", "age", "gender", "occupation")
    assert s["hist_item"].key == "item_id" and s["neg_hist_cat"].key == "item_cat"
    assert s["hist_item"].shape == (8,) and s.max_len == 8
    assert s.vocab_size("item_id") == s.vocab_size("hist_item") == 30 * 0 + 1001
    with pytest.raises(KeyError):
        s.vocab_size("label")
    assert Schema.from_dict(s.to_dict()) == s


def test_embedding_sizes_fit(ds):
    emb = {f: torch.nn.Embedding(ds.schema.vocab_size(f), 4) for f in ds.schema.sparse_fields}
    b = next(ds.train.batches(64, shuffle=True))
    for f, e in emb.items():
        e(b[f])
    torch.nn.Embedding(ds.schema.vocab_size("item_id"), 4, padding_idx=0)(b["hist_item"])
