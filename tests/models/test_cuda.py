"""The models on a CUDA GPU (skipped without one): bf16 autocast training, fp32 agreement with
the CPU, checkpoints moving between devices."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from udg_fast import models, train

from .conftest import ALL_VARIANTS, tiny_hp

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name,udg", ALL_VARIANTS)
def test_trains_on_cuda_with_bf16_autocast(synth, name, udg):
    train.set_seed(0)
    model = models.build(name, synth.schema, udg=udg, **tiny_hp(name))
    res = train.fit(model, synth, train.TrainConfig(epochs=2, batch_size=64, lr=1e-2, device="cuda", amp=True,
                                                    progress=False), log=lambda s: None)
    assert res["device"].startswith("cuda")
    assert all(math.isfinite(h["train_loss"]) for h in res["history"])
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"] + 0.05
    assert math.isfinite(res["test"]["auc"]) and math.isfinite(res["test"]["logloss"])


@pytest.mark.parametrize("name", list(models.MODELS))
def test_cuda_float32_matches_cpu(synth, batch, name, tmp_path):
    train.set_seed(1)
    cpu = models.build(name, synth.schema, udg=True, **tiny_hp(name)).eval()
    gpu = copy.deepcopy(cpu).cuda()
    with torch.no_grad():
        ref = cpu(batch)
        out = gpu({k: v.cuda() for k, v in batch.items()}).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    # a checkpoint written from the GPU model loads on the CPU and predicts the same
    path = train.save_checkpoint(tmp_path / "gpu.pt", gpu, epoch=0)
    back, _ = train.load_checkpoint(path, synth.schema, map_location="cpu")
    torch.testing.assert_close(back.score(batch), cpu.score(batch), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["din", "dien"])
def test_export_on_cuda_scores_like_the_model(synth, batch, name, tmp_path):
    """serving.export of a model on the GPU: the program (the GPU backends' ops kept, saved and
    loaded) gives model.score's probabilities at another batch size."""
    from udg_fast import serving

    train.set_seed(2)
    gpu = models.build(name, synth.schema, udg=True, **tiny_hp(name)).cuda()
    b = {k: v.cuda() for k, v in batch.items()}
    ep = serving.export(gpu, b)
    torch.export.save(ep, tmp_path / "m.pt2")
    prog = torch.export.load(tmp_path / "m.pt2").module()
    rows = {k: b[k][7:30] for k in gpu.required_fields()}
    torch.testing.assert_close(prog(rows), gpu.score(rows), rtol=1e-5, atol=1e-6)
