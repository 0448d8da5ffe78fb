"""A synthetic CTR dataset with planted user-dependent structure.

Items have categories and latent vectors ``v_i = c_{cat(i)} + 0.5 * noise`` (``c_k`` a random
category centre); each user has personal weights

    w_u = profile_strength * (A_age[age_u] + A_gender[gender_u] + A_occ[occupation_u])
          + personal_strength * z_u

and clicks item ``i`` with probability ``sigmoid(scale * w_u . v_i / sqrt(dim) + b_i)``. Because
``w_u`` has mean zero over users, for every category roughly half of the users like it and half
dislike it: a shared model of the item alone (``b_i``) can only learn popularity, while the
user-dependent part -- recoverable from the user id, from the click history, and partly from the
profile (for the cold-start study) -- carries most of the signal. The true logit of every sample
is kept in the ``oracle_logit`` column (role ``meta``; not a model input) as an upper bound.

Every user's samples are spread in time without ties; each user sees items drawn uniformly with
replacement. Deterministic given ``seed``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .core import DataError, Field, build_interaction_splits, rng_for, standard_fields
from .source import Source

OPTIONS = {
    "n_users": 500,
    "n_items": 1000,
    "n_cats": 20,
    "samples_per_user": 60,
    "dim": 8,
    "scale": 1.5,
    "profile_strength": 1.0,
    "personal_strength": 1.0,
    "activity_skew": 0.0,
}

PROFILE = {"age": 6, "gender": 2, "occupation": 10}  # number of values of each profile field
START_TIME = 1_500_000_000


def sources(path, progress=None) -> Source:
    if path is not None:
        raise DataError("synthetic: takes no path (it is generated; see its options)")
    return Source(fingerprint={}, kind="synthetic", description="generated")


def _validate(o: dict) -> None:
    for k in ("n_users", "n_items", "n_cats", "samples_per_user", "dim"):
        if not isinstance(o[k], (int, np.integer)) or isinstance(o[k], bool) or o[k] < 1:
            raise DataError(f"synthetic: option {k!r} must be a positive integer, got {o[k]!r}")
    for k in ("scale", "profile_strength", "personal_strength", "activity_skew"):
        if not isinstance(o[k], (int, float)) or o[k] < 0:
            raise DataError(f"synthetic: option {k!r} must be a non-negative number, got {o[k]!r}")


def planted(options: dict) -> dict:
    """The generator's hidden parameters for ``options`` (same seed, same values)."""
    o = options
    rng = rng_for(o["seed"], 100)
    d, n_items, n_users = o["dim"], o["n_items"], o["n_users"]
    centres = rng.standard_normal((o["n_cats"] + 1, d))
    item_cat = np.concatenate([[0], rng.integers(1, o["n_cats"] + 1, size=n_items)])
    item_vec = centres[item_cat] + 0.5 * rng.standard_normal((n_items + 1, d))
    item_bias = 0.5 * rng.standard_normal(n_items + 1)
    profile = {k: np.concatenate([[0], rng.integers(1, v + 1, size=n_users)]) for k, v in PROFILE.items()}
    tables = {k: rng.standard_normal((v + 1, d)) / np.sqrt(len(PROFILE)) for k, v in PROFILE.items()}
    w_profile = sum(tables[k][profile[k]] for k in PROFILE)
    z = rng.standard_normal((n_users + 1, d))
    user_w = o["profile_strength"] * w_profile + o["personal_strength"] * z
    return {
        "item_cat": item_cat,
        "item_vec": item_vec,
        "item_bias": item_bias,
        "profile": profile,
        "user_w": user_w,
    }


def build(name: str, source: Source, options: dict, progress: Callable | None = None):
    o = options
    _validate(o)
    p = planted(o)
    rng = rng_for(o["seed"], 101)
    n_users, n_items = o["n_users"], o["n_items"]

    if o["activity_skew"] > 0:
        s = float(o["activity_skew"])
        n_per = np.maximum(3, np.round(o["samples_per_user"] * rng.lognormal(-s * s / 2, s, n_users))).astype(np.int64)
    else:
        n_per = np.full(n_users, o["samples_per_user"], np.int64)
    user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), n_per)
    total = len(user)
    item = rng.integers(1, n_items + 1, size=total, dtype=np.int64)

    # per-user increasing timestamps, no ties: a random start plus gaps of 1 minute to 2 hours
    gaps = rng.integers(60, 7200, size=total, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    gaps[first] = START_TIME + rng.integers(0, 30 * 86400, size=n_users)
    csum = np.cumsum(gaps)
    ts = csum - np.repeat(csum[first] - gaps[first], n_per)

    logit = np.empty(total, np.float32)
    step = 1 << 20
    for s0 in range(0, total, step):
        u, i = user[s0 : s0 + step], item[s0 : s0 + step]
        dot = np.einsum("nd,nd->n", p["user_w"][u], p["item_vec"][i]) / np.sqrt(o["dim"])
        logit[s0 : s0 + step] = o["scale"] * dot + p["item_bias"][i]
    label = (rng.random(total) < 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)

    pos = label > 0
    splits = build_interaction_splits(
        user=user,
        item=item,
        label=label,
        timestamp=ts,
        item_cat=p["item_cat"],
        n_items=n_items,
        clicked_user=user[pos],  # "clicked" = a positive sample, at any time
        clicked_item=item[pos],
        max_len=o["max_len"],
        seed=o["seed"],
        user_columns=p["profile"],
        extra_columns={"oracle_logit": logit},
        progress=progress,
    )
    schema = standard_fields(
        n_users=n_users,
        n_items=n_items,
        n_cats=o["n_cats"],
        profile={k: v + 1 for k, v in PROFILE.items()},
        max_len=o["max_len"],
        meta_extra=[Field("oracle_logit", "meta", None, dtype="float32",
                          description="the generator's true logit (an upper bound; not an input)")],
    )
    return schema, splits, {"interactions": int(total)}, {}
