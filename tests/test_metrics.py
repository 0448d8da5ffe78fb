"""udg_fast.metrics against scikit-learn and direct formulas."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import mean_squared_error, roc_auc_score

from udg_fast import metrics as M

SEEDS = [0, 1, 2, 3]
SIZES = [2, 7, 1000]


def _data(seed: int, n: int, dtype=np.float64, ties: bool = False):
    """Random labels with both classes present, and probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    rng.shuffle(y)
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    return y, p.astype(dtype)


def _sk_auc(y, s) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(roc_auc_score(y, s))


# ------------------------------------------------------------------------------------------ AUC
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed, n, dtype):
    y, p = _data(seed, n, dtype)
    got = M.auc(torch.from_numpy(y), torch.from_numpy(p))
    assert got == pytest.approx(_sk_auc(y, p), abs=1e-12)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_auc_heavy_ties_match_sklearn(seed, n):
    y, p = _data(seed, n, ties=True)  # 11 distinct values
    assert M.auc(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(_sk_auc(y, p), abs=1e-12)
    s = np.random.default_rng(seed).integers(0, 3, n)  # integer scores, 3 values
    assert M.auc(torch.from_numpy(y), torch.from_numpy(s)) == pytest.approx(_sk_auc(y, s), abs=1e-12)


def test_auc_all_equal_scores_is_half():
    y, _ = _data(0, 1000)
    assert M.auc(torch.from_numpy(y), torch.full((1000,), 0.3)) == 0.5
    assert M.auc(torch.tensor([0, 1]), torch.tensor([0.7, 0.7])) == 0.5


def test_auc_perfect_and_reversed():
    y = torch.tensor([0, 0, 1, 1])
    assert M.auc(y, torch.tensor([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert M.auc(y, torch.tensor([0.4, 0.3, 0.2, 0.1])) == 0.0


def test_auc_depends_only_on_order():
    y, p = _data(5, 1000)
    yt, pt = torch.from_numpy(y), torch.from_numpy(p)
    a = M.auc(yt, pt)
    assert M.auc(yt, torch.logit(pt)) == pytest.approx(a, abs=1e-12)
    assert M.auc(yt, 3 * pt - 7) == pytest.approx(a, abs=1e-12)
    s = pt.clone()
    s[0], s[1] = float("inf"), float("-inf")  # infinities are ordinary extreme scores
    assert M.auc(yt, s) == pytest.approx(_sk_auc(y, np.nan_to_num(s.numpy(), posinf=2.0, neginf=-2.0)), abs=1e-12)


@pytest.mark.parametrize("cls", [0, 1])
def test_auc_one_class_is_nan(cls):
    y = torch.full((10,), cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning
        assert math.isnan(M.auc(y, torch.rand(10)))
        assert math.isnan(M.auc(torch.tensor([cls]), torch.tensor([0.5])))


# -------------------------------------------------------------------------------------- log loss
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_matches_sklearn_float64(seed, n):
    y, p = _data(seed, n)
    assert M.log_loss(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sk_log_loss(y, p), abs=1e-12)


def test_log_loss_clipping_matches_sklearn():
    """Exact 0 / 1 probabilities and values within eps of them: clipped as sklearn does."""
    y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    for dtype in (np.float64, np.float32):
        eps = np.finfo(dtype).eps
        p = np.array([0.0, 1.0, 0.0, 1.0, eps / 2, 1 - eps / 4, 0.5, 0.25], dtype=dtype)
        got = M.log_loss(torch.from_numpy(y), torch.from_numpy(p))
        assert got == pytest.approx(sk_log_loss(y, p), rel=1e-6 if dtype == np.float32 else 1e-12)
    assert math.isfinite(got)


@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_float32_matches_sklearn(seed):
    y, p = _data(seed, 1000, np.float32)
    assert M.log_loss(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(sk_log_loss(y, p), rel=1e-6)


def test_log_loss_one_class_and_explicit_eps():
    y = np.ones(5, dtype=np.int64)
    p = np.array([0.9, 0.8, 0.99, 1.0, 0.6])
    got = M.log_loss(torch.from_numpy(y), torch.from_numpy(p))
    assert got == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), abs=1e-12)
    eps = 1e-3
    direct = -np.mean(np.log(np.clip(p, eps, 1 - eps)))
    assert M.log_loss(torch.from_numpy(y), torch.from_numpy(p), eps=eps) == pytest.approx(direct, abs=1e-12)
    with pytest.raises(ValueError, match="eps"):
        M.log_loss(torch.from_numpy(y), torch.from_numpy(p), eps=0.7)


def test_log_loss_from_logits():
    y, p = _data(3, 1000)
    z = torch.logit(torch.from_numpy(p))
    yt = torch.from_numpy(y)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, yt.double()).item()
    assert M.log_loss(yt, z, from_logits=True) == pytest.approx(ref, abs=1e-12)
    assert M.log_loss(yt, z, from_logits=True) == pytest.approx(sk_log_loss(y, p), abs=1e-9)
    # extreme logits stay finite where right, and infinite logits are allowed
    zz = torch.tensor([100.0, -100.0, float("inf"), float("-inf")])
    assert M.log_loss(torch.tensor([1, 0, 1, 0]), zz, from_logits=True) == pytest.approx(0.0, abs=1e-40)
    assert M.log_loss(torch.tensor([0, 0]), torch.tensor([800.0, 0.0]), from_logits=True) == pytest.approx(
        (800.0 + math.log(2)) / 2)
    with pytest.raises(ValueError, match="NaN"):
        M.log_loss(torch.tensor([0, 1]), torch.tensor([0.0, float("nan")]), from_logits=True)


# ------------------------------------------------------------------------------------ RMSE, RIG
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_rmse_matches_sklearn(n, dtype):
    y, p = _data(n, n, dtype)
    ref = math.sqrt(mean_squared_error(y.astype(np.float64), p.astype(np.float64)))
    assert M.rmse(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(ref, abs=1e-12)
    z = torch.logit(torch.from_numpy(p.astype(np.float64)).clamp(1e-6, 1 - 1e-6))
    assert M.rmse(torch.from_numpy(y), z, from_logits=True) == pytest.approx(
        math.sqrt(mean_squared_error(y, torch.sigmoid(z).numpy())), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_rig_direct_formula(seed):
    y, p = _data(seed, 1000)
    base = 0.3
    h = -base * math.log(base) - (1 - base) * math.log(1 - base)
    ref = 1 - sk_log_loss(y, p) / h
    assert M.rig(torch.from_numpy(y), torch.from_numpy(p), base) == pytest.approx(ref, abs=1e-12)


def test_rig_constant_base_rate_predictor_is_zero():
    y = torch.tensor([1, 0, 0, 0] * 25)  # positive rate exactly 1/4
    assert M.rig(y, torch.full((100,), 0.25, dtype=torch.float64), 0.25) == pytest.approx(0.0, abs=1e-12)
    assert M.rig(y, y.double(), 0.25) == pytest.approx(1.0, abs=1e-12)  # perfect predictor (after clipping)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), "x"])
def test_rig_rejects_bad_base_rate(bad):
    with pytest.raises(ValueError, match="base_rate"):
        M.rig(torch.tensor([0, 1]), torch.tensor([0.2, 0.8]), bad)


# ------------------------------------------------------------------------------------------- gAUC
def _gauc_reference(y, s, g) -> float:
    """Python loop over users + sklearn; one-class users skipped; weight = #samples."""
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if len(np.unique(y[m])) < 2:
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    return num / den if den else float("nan")


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_gauc_matches_python_loop(seed, ties):
    rng = np.random.default_rng(seed)
    n = 1000
    y, s = _data(seed, n, ties=ties)
    g = rng.integers(-50, 10**9, 80)[rng.integers(0, 80, n)]  # arbitrary ids, some one-sample users
    g[:20] = 7  # user 7 all negative -> skipped
    y[:20] = 0
    y[g == 7] = 0
    got = M.gauc(torch.from_numpy(y), torch.from_numpy(s), torch.from_numpy(g))
    assert got == pytest.approx(_gauc_reference(y, s, g), abs=1e-12)
    # invariant under a permutation of the samples
    perm = rng.permutation(n)
    assert M.gauc(torch.from_numpy(y[perm]), torch.from_numpy(s[perm]), torch.from_numpy(g[perm])) == pytest.approx(
        got, abs=1e-12)


def test_gauc_one_group_is_auc_and_no_eligible_group_is_nan():
    y, p = _data(9, 500, ties=True)
    yt, pt = torch.from_numpy(y), torch.from_numpy(p)
    assert M.gauc(yt, pt, torch.full((500,), 3)) == pytest.approx(M.auc(yt, pt), abs=1e-15)
    assert math.isnan(M.gauc(yt, pt, torch.arange(500)))  # one sample per user: no user is eligible
    assert math.isnan(M.gauc(torch.tensor([0, 0, 1, 1]), torch.rand(4), torch.tensor([1, 1, 2, 2])))


@pytest.mark.slow
def test_gauc_million_samples_vectorised():
    """10^6 samples, 10^5 users: checked against a pandas midrank (Mann–Whitney) computation."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    n = 10**6
    g = rng.integers(0, 10**5, n)
    s = np.round(rng.random(n), 2)
    y = (rng.random(n) < 0.2 + 0.3 * s).astype(np.int64)
    got = M.gauc(torch.from_numpy(y), torch.from_numpy(s), torch.from_numpy(g))

    df = pd.DataFrame({"g": g, "s": s, "y": y})
    df["r"] = df.groupby("g")["s"].rank(method="average")
    agg = df.assign(ry=df.r * df.y).groupby("g").agg(P=("y", "sum"), n=("y", "size"), R=("ry", "sum"))
    agg = agg[(agg.P > 0) & (agg.P < agg.n)]
    neg = agg.n - agg.P
    auc_u = (agg.R - agg.P * (agg.P + 1) / 2) / (agg.P * neg)
    ref = float((agg.n * auc_u).sum() / agg.n.sum())
    assert got == pytest.approx(ref, abs=1e-10)


# ------------------------------------------------------------------------------------ evaluate
def test_evaluate_matches_the_functions():
    y, p = _data(4, 1000, ties=True)
    g = np.random.default_rng(4).integers(0, 40, 1000)
    yt, pt, gt = torch.from_numpy(y), torch.from_numpy(p), torch.from_numpy(g)
    out = M.evaluate(yt, pt, groups=gt, base_rate=0.4)
    assert list(out) == ["auc", "logloss", "rmse", "rig", "gauc"]
    assert all(isinstance(v, float) for v in out.values())
    assert out["auc"] == M.auc(yt, pt)
    assert out["logloss"] == M.log_loss(yt, pt)
    assert out["rmse"] == M.rmse(yt, pt)
    assert out["rig"] == pytest.approx(M.rig(yt, pt, 0.4), abs=1e-15)
    assert out["gauc"] == M.gauc(yt, pt, gt)
    assert list(M.evaluate(yt, pt)) == ["auc", "logloss", "rmse"]
    z = torch.logit(pt.clamp(1e-6, 1 - 1e-6))
    oz = M.evaluate(yt, z, groups=gt, from_logits=True)
    assert oz["auc"] == out["auc"] and oz["gauc"] == out["gauc"]
    assert oz["logloss"] == pytest.approx(M.log_loss(yt, z, from_logits=True), abs=1e-15)


def test_evaluate_one_class_split_does_not_crash():
    out = M.evaluate(torch.zeros(3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), groups=torch.tensor([1, 1, 2]), base_rate=0.1)
    assert math.isnan(out["auc"]) and math.isnan(out["gauc"])
    assert out["logloss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7])), abs=1e-12)


# --------------------------------------------------------------------------------- input handling
@pytest.mark.parametrize("label_dtype", [torch.bool, torch.int64, torch.int32, torch.uint8, torch.float32,
                                         torch.float64])
def test_label_dtypes(label_dtype):
    y, p = _data(2, 100)
    ref = M.evaluate(torch.from_numpy(y), torch.from_numpy(p), groups=torch.arange(100) % 5, base_rate=0.5)
    got = M.evaluate(torch.from_numpy(y).to(label_dtype), torch.from_numpy(p), groups=torch.arange(100) % 5,
                     base_rate=0.5)
    assert got == ref and not math.isnan(ref["gauc"])


def test_column_vectors_arrays_lists_and_grad_tensors():
    y, p = _data(1, 50)
    ref = M.log_loss(torch.from_numpy(y), torch.from_numpy(p))
    assert M.log_loss(torch.from_numpy(y)[:, None], torch.from_numpy(p)[:, None]) == ref
    assert M.log_loss(y, p) == ref
    assert M.log_loss(y.tolist(), p.tolist()) == ref
    assert M.log_loss(torch.from_numpy(y), torch.from_numpy(p).requires_grad_()) == ref


@pytest.mark.parametrize("fn", ["auc", "log_loss", "rmse", "rig", "gauc", "evaluate"])
def test_empty_input_raises(fn):
    e, x = torch.zeros(0), torch.tensor([0.0, 1.0])
    call = {
        "auc": lambda y, p: M.auc(y, p), "log_loss": lambda y, p: M.log_loss(y, p),
        "rmse": lambda y, p: M.rmse(y, p), "rig": lambda y, p: M.rig(y, p, 0.5),
        "gauc": lambda y, p: M.gauc(y, p, torch.zeros(len(y), dtype=torch.long)),
        "evaluate": lambda y, p: M.evaluate(y, p),
    }[fn]
    pname = "scores" if fn in ("auc", "gauc") else "probs"
    with pytest.raises(ValueError, match=rf"^{pname} is empty"):
        call(e, e)
    with pytest.raises(ValueError, match=r"^labels is empty"):
        call(e, x)
    if fn == "gauc":
        with pytest.raises(ValueError, match=r"^groups is empty"):
            M.gauc(x, x, torch.zeros(0, dtype=torch.long))


def test_mismatched_lengths_name_both_arguments():
    with pytest.raises(ValueError, match=r"labels and probs .*labels has 3, probs has 2"):
        M.log_loss(torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"labels and scores .*labels has 2, scores has 3"):
        M.auc(torch.tensor([0, 1]), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"labels and groups .*labels has 2, groups has 1"):
        M.gauc(torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), torch.tensor([1]))


@pytest.mark.parametrize("shape", [(), (2, 2), (1, 4), (4, 1, 1)])
def test_bad_shapes_raise(shape):
    bad = torch.full(shape, 0.5)
    with pytest.raises(ValueError, match=r"probs must have shape \[N\]"):
        M.log_loss(torch.ones(bad.numel()), bad)
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        M.auc(torch.ones(shape), torch.full((bad.numel(),), 0.5))


@pytest.mark.parametrize("labels", [[0, 2], [0, -1], [0.0, 0.5], [0.0, float("nan")]])
def test_labels_not_binary_raise(labels):
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        M.auc(torch.tensor(labels), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        M.evaluate(torch.tensor(labels), torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("bad", [1.5, -0.01, float("nan"), float("inf")])
@pytest.mark.parametrize("fn", [M.log_loss, M.rmse, lambda y, p: M.rig(y, p, 0.5), M.evaluate])
def test_probs_outside_unit_interval_raise(fn, bad):
    with pytest.raises(ValueError, match=r"^probs must be probabilities in \[0, 1\]"):
        fn(torch.tensor([0, 1, 1]), torch.tensor([0.2, bad, 0.7]))


def test_nan_scores_and_float_groups_raise():
    with pytest.raises(ValueError, match="scores contains NaN"):
        M.auc(torch.tensor([0, 1]), torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="scores contains NaN"):
        M.gauc(torch.tensor([0, 1]), torch.tensor([0.1, float("nan")]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="groups must hold integer ids"):
        M.gauc(torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0]))


# -------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_cuda_matches_cpu():
    y, p = _data(11, 5000, ties=True)
    g = np.random.default_rng(11).integers(0, 300, 5000)
    for dtype in (torch.float64, torch.float32):  # p holds exact 0s and 1s: clipped by the dtype's eps
        cpu = M.evaluate(torch.from_numpy(y), torch.from_numpy(p).to(dtype), groups=torch.from_numpy(g), base_rate=0.4)
        dev = M.evaluate(torch.from_numpy(y).cuda(), torch.from_numpy(p).to("cuda", dtype),
                         groups=torch.from_numpy(g).cuda(), base_rate=0.4)
        assert list(dev) == list(cpu)
        for k in cpu:
            assert dev[k] == pytest.approx(cpu[k], abs=1e-12), k
    yc, pc, gc = torch.from_numpy(y).cuda(), torch.from_numpy(p).cuda(), torch.from_numpy(g).cuda()
    assert M.auc(yc, pc) == pytest.approx(_sk_auc(y, p), abs=1e-12)
    assert M.gauc(yc, pc, gc) == pytest.approx(_gauc_reference(y, p, g), abs=1e-12)
    assert M.log_loss(yc, pc) == pytest.approx(sk_log_loss(y, p), abs=1e-12)
    assert M.auc(torch.from_numpy(y), pc) == M.auc(yc, pc)  # labels on CPU are moved to the scores' device
    assert math.isnan(M.auc(torch.zeros(4, device="cuda"), torch.rand(4, device="cuda")))
    n = 10**6  # large input on the GPU
    yb = torch.randint(0, 2, (n,), device="cuda")
    sb = torch.rand(n, device="cuda")
    gb = torch.randint(0, 10**5, (n,), device="cuda")
    assert M.gauc(yb, sb, gb) == pytest.approx(M.gauc(yb.cpu(), sb.cpu(), gb.cpu()), abs=1e-12)
