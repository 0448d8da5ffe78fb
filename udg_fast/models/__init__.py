"""The five CTR models of the UDG paper, each with and without UDG.

    >>> from udg_fast import data, models
    >>> ds = data.load("ml-100k")
    >>> model = models.build("din", ds.schema, udg=True, embed_dim=18)
    >>> logits = model(next(ds.train.batches(256)))          # [256]
    >>> models.count_parameters(model)

Models (`MODELS`): pnn, deepfm, wdl, din, dien. Hyper-parameters common to all are in
`udg_fast.models.base.COMMON_HPARAMS`, each model's own in its `DEFAULTS`.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from udg_fast.data import Schema
from udg_fast.models.base import COMMON_HPARAMS, CTRModel, ModelError
from udg_fast.models.deepfm import DeepFM
from udg_fast.models.dien import DIEN
from udg_fast.models.din import DIN
from udg_fast.models.pnn import PNN
from udg_fast.models.wdl import WDL

MODELS: dict[str, type[CTRModel]] = {"pnn": PNN, "deepfm": DeepFM, "wdl": WDL, "din": DIN, "dien": DIEN}


def build(name: str, schema: Schema, udg: bool = False, **hparams: Any) -> CTRModel:
    """The model `name` (one of `MODELS`) for `schema`, with UDG if `udg`.

    Raises ModelError for an unknown name or hyper-parameter.
    """
    try:
        cls = MODELS[str(name).lower()]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (models: {', '.join(MODELS)})") from None
    return cls(schema, udg=udg, **hparams)


def build_from_config(config: Mapping[str, Any]) -> CTRModel:
    """Rebuild a model from `model.config` (as stored in a checkpoint)."""
    missing = [k for k in ("model", "udg", "hparams", "schema") if k not in config]
    if missing:
        raise ModelError(f"model config lacks the key(s) {missing} (has: {', '.join(config)})")
    return build(config["model"], Schema.from_dict(config["schema"]), udg=config["udg"], **config["hparams"])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters of `model` (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def hparam_defaults(name: str) -> dict[str, Any]:
    """Every hyper-parameter of model `name` with its default."""
    try:
        return MODELS[str(name).lower()].resolve_hparams({})
    except KeyError:
        raise ModelError(f"unknown model {name!r} (models: {', '.join(MODELS)})") from None


__all__ = ["COMMON_HPARAMS", "CTRModel", "DIEN", "DIN", "DeepFM", "MODELS", "ModelError", "PNN", "WDL",
           "build", "build_from_config", "count_parameters", "hparam_defaults"]
