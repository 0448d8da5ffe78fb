"""The prepared-data cache: reuse, invalidation, atomic writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from udg_fast import data
from udg_fast.data import cache


def _entries(home: Path, name: str):
    d = home / name
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _same(a, b):
    assert a.schema == b.schema
    for s in ("train", "valid", "test"):
        assert a[s].fields == b[s].fields
        for k in a[s].fields:
            np.testing.assert_array_equal(a[s][k], b[s][k], err_msg=f"{s}.{k}")


def test_second_load_reads_the_cache(tmp_path, raw, data_home, monkeypatch):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    a = data.load("ml-100k", p)
    assert not a.meta["from_cache"]
    assert Path(a.meta["cache_path"]).parent == data_home / "ml-100k"
    from udg_fast.data import movielens

    def boom(*args, **kw):
        raise AssertionError("prepared again instead of reading the cache")

    monkeypatch.setattr(movielens, "build", boom)
    monkeypatch.setitem(data.DATASETS, "ml-100k", data.DATASETS["ml-100k"].__class__(
        **{**data.DATASETS["ml-100k"].__dict__, "build": boom}))
    b = data.load("ml-100k", p)
    assert b.meta["from_cache"]
    _same(a, b)
    assert b.stats == json.loads(json.dumps(a.stats))
    assert b.vocab["item_cat"].tolist() == a.vocab["item_cat"].tolist()
    for s in ("train", "valid", "test"):
        for k in b[s].fields:
            arr = b[s][k]
            assert arr.flags.c_contiguous and arr.flags.writeable


def test_changed_source_or_option_prepares_again(tmp_path, raw, data_home):
    ml = raw.movielens()
    p = raw.grouplens_100k(tmp_path, ml)
    a = data.load("ml-100k", p)
    assert data.load("ml-100k", p).meta["from_cache"]
    # an option
    b = data.load("ml-100k", p, max_len=10)
    assert not b.meta["from_cache"] and b.meta["key"] != a.meta["key"]
    assert b.train["hist_item"].shape[1] == 10
    c = data.load("ml-100k", p, seed=3)
    assert not c.meta["from_cache"] and c.meta["key"] not in (a.meta["key"], b.meta["key"])
    # the source: same size, one rating changed
    f = p / "u.data"
    text = f.read_text()
    first = text.split("\n", 1)[0].split("\t")
    first[2] = "1" if first[2] != "1" else "5"
    f.write_text("\t".join(first) + "\n" + text.split("\n", 1)[1])
    d = data.load("ml-100k", p)
    assert not d.meta["from_cache"] and d.meta["key"] != a.meta["key"]
    assert len(_entries(data_home, "ml-100k")) == 8  # 4 entries, npz + json each


def test_same_content_elsewhere_shares_the_entry(tmp_path, raw):
    ml = raw.movielens()
    a = data.load("ml-100k", raw.grouplens_100k(tmp_path / "x", ml))
    b = data.load("ml-100k", raw.grouplens_100k(tmp_path / "y", ml))
    assert b.meta["from_cache"] and a.meta["key"] == b.meta["key"]


def test_interrupted_write_leaves_nothing_trusted(tmp_path, raw, data_home, monkeypatch):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    real_write = cache.write_npz

    def half_then_die(f, arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "write_npz", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        data.load("ml-100k", p)
    assert _entries(data_home, "ml-100k") == []  # the temporary file was removed
    monkeypatch.setattr(cache, "write_npz", real_write)
    a = data.load("ml-100k", p)
    assert not a.meta["from_cache"]
    assert data.load("ml-100k", p).meta["from_cache"]


def test_damaged_or_partial_entries_are_not_trusted(tmp_path, raw, data_home):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    a = data.load("ml-100k", p)
    npz = Path(a.meta["cache_path"])
    js = npz.with_suffix(".json")
    # a crash between the two renames: npz without json
    js.unlink()
    assert not data.load("ml-100k", p).meta["from_cache"]
    # a truncated npz (size differs from the json's record)
    npz.write_bytes(npz.read_bytes()[:1000])
    assert not data.load("ml-100k", p).meta["from_cache"]
    # same size but garbage
    npz.write_bytes(b"\0" * npz.stat().st_size)
    b = data.load("ml-100k", p)
    assert not b.meta["from_cache"]
    _same(a, b)
    # a stale temporary file from a killed run is ignored
    (npz.parent / f".{npz.name}.abc.tmp").write_bytes(b"junk")
    assert data.load("ml-100k", p).meta["from_cache"]
    # an entry from another preprocessing version is not used
    doc = json.loads(js.read_text())
    doc["version"] = "0"
    js.write_text(json.dumps(doc))
    assert not data.load("ml-100k", p).meta["from_cache"]


def test_cache_false_writes_nothing_and_refresh_rewrites(tmp_path, raw, data_home):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    data.load("ml-100k", p, cache=False)
    assert _entries(data_home, "ml-100k") == []
    data.load("ml-100k", p)
    r = data.load("ml-100k", p, refresh=True)
    assert not r.meta["from_cache"]


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("UDG_FAST_DATA", str(tmp_path / "elsewhere"))
    assert data.cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("UDG_FAST_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_root() == tmp_path / "home" / ".cache" / "udg_fast"


def test_info_reads_the_cache_only(tmp_path, raw):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    with pytest.raises(data.DataError, match="nothing cached|not prepared"):
        data.info("ml-1m")
    with pytest.raises(data.DataError, match="not prepared"):
        data.info("ml-100k", p)
    ds = data.load("ml-100k", p, max_len=8)
    docs = data.info("ml-100k", p, max_len=8)
    assert len(docs) == 1 and docs[0]["stats"]["samples"] == ds.stats["samples"]
    # no path for ml-100k: the registry entry is not cached, so every entry is listed
    assert [d["key"] for d in data.info("ml-100k")] == [ds.meta["key"]]


def test_synthetic_is_cached_by_options(data_home):
    a = data.load("synthetic", n_users=40, samples_per_user=12)
    b = data.load("synthetic", n_users=40, samples_per_user=12)
    c = data.load("synthetic", n_users=41, samples_per_user=12)
    assert not a.meta["from_cache"] and b.meta["from_cache"] and not c.meta["from_cache"]
    _same(a, b)


def test_cache_file_is_a_plain_npz_and_loads_memory_mapped(tmp_path, raw):
    p = raw.grouplens_100k(tmp_path, raw.movielens())
    a = data.load("ml-100k", p)
    b = data.load("ml-100k", p)
    import mmap

    h = b.train["hist_item"]
    base = h
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base
    assert isinstance(base, mmap.mmap) and h.flags.writeable  # a view of the file, no copy
    t = b.train.to_torch()["hist_item"]
    assert t.data_ptr() == b.train["hist_item"].ctypes.data
    b.train["label"][0] = 7  # copy-on-write: the file is not changed
    with np.load(a.meta["cache_path"], allow_pickle=False) as z:  # numpy reads it as usual
        for s in ("train", "valid", "test"):
            for k in a[s].fields:
                np.testing.assert_array_equal(z[f"{s}.{k}"], a[s][k])
        assert z["vocab.item_cat"].tolist() == a.vocab["item_cat"].tolist()
    assert data.load("ml-100k", p).train["label"][0] in (0.0, 1.0)


def test_read_npz_handles_plain_numpy_files(tmp_path):
    arrays = {"a": np.arange(10), "b": np.ones((3, 4), np.float32), "e": np.zeros((0, 5), np.int64),
              "s": np.array(["x", "yz"])}
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    with open(tmp_path / "ours.npz", "wb") as f:
        cache.write_npz(f, arrays)
    for name in ("plain.npz", "packed.npz", "ours.npz"):
        got = cache.read_npz(tmp_path / name)
        assert set(got) == set(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(got[k], v)
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
