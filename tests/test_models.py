"""Models, Fashion-MNIST loader, evaluation helper and committed checkpoints (< 60 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tvm_mpq.zoo import fashion_mnist as data
from tvm_mpq.zoo import models
from tvm_mpq.zoo.fashion_mnist import (
    calib_subset,
    correct_predictions,
    evaluate,
    load_fashion_mnist,
    make_loader,
    paired_drop_se,
)
from tvm_mpq.zoo.models import MODELS, build, checkpoint_path, load_pretrained

SMALL = {  # quick-to-run sizes of every registered model
    "mobilenet_v1": {"width_mult": 0.25},
    "mobilenet_v2": {"width_mult": 0.35},
    "resnet8": {},
    "resnet20": {},
}
PRETRAINED = ["mobilenet_v2", "resnet8"]


def test_registry_covers_all_models() -> None:
    assert set(SMALL) == set(MODELS)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [28, 32])
def test_forward_shape(name: str, size: int) -> None:
    torch.manual_seed(0)
    m = build(name, **SMALL[name]).eval()
    with torch.no_grad():
        y = m(torch.randn(3, 1, size, size))
    assert y.shape == (3, 10)
    assert torch.isfinite(y).all()


def test_in_channels_and_num_classes() -> None:
    m = build("mobilenet_v2", width_mult=0.35, in_channels=3, num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_conv_bn_layout_and_names(name: str) -> None:
    """Every conv is bias-free and followed by its BN at the next index of a Sequential."""
    m = build(name, **SMALL[name])
    named = dict(m.named_modules())
    convs = [n for n, mod in named.items() if isinstance(mod, nn.Conv2d)]
    linears = [n for n, mod in named.items() if isinstance(mod, nn.Linear)]
    assert convs and len(linears) == 1
    assert convs[0] == "features.0.0"
    for n in convs:
        assert named[n].bias is None
        parent, idx = n.rsplit(".", 1)
        assert isinstance(named[parent], nn.Sequential)
        assert isinstance(named[f"{parent}.{int(idx) + 1}"], nn.BatchNorm2d), n


def test_torchvision_style_names() -> None:
    names = dict(build("mobilenet_v2", width_mult=0.35).named_modules())
    assert isinstance(names["features.3.conv.0.0"], nn.Conv2d)  # expand 1x1
    assert names["features.3.conv.1.0"].groups > 1  # depthwise
    assert isinstance(names["classifier.1"], nn.Linear)
    names = dict(build("resnet8").named_modules())
    assert isinstance(names["features.2.shortcut.0"], nn.Conv2d)
    assert isinstance(names["fc"], nn.Linear)


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2"):
        build("alexnet")
    with pytest.raises(ValueError, match="resnet8"):
        load_pretrained("alexnet")


def test_missing_checkpoint_message(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="scripts/train.py"):
        load_pretrained("resnet8", tmp_path / "nope.pt")


def test_export_to_relax() -> None:
    """torch.export -> Relax import works and matches torch (ResNet-8: adds + plain convs)."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    m = build("resnet8").eval()
    x = torch.randn(1, 1, 28, 28)
    mod = from_exported_program(torch.export.export(m, (x,)), unwrap_unit_return_tuple=True)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(y, m(x).numpy(), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- data


def test_loader_shapes_and_labels() -> None:
    x, y = load_fashion_mnist("test", limit=500)
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # normalised
    xt, yt = load_fashion_mnist("train")
    assert xt.shape == (60000, 1, 28, 28) and set(yt.unique().tolist()) == set(range(10))


def test_calib_subset_reproducible() -> None:
    a, la = calib_subset(64, seed=3)
    b, lb = calib_subset(64, seed=3)
    c, _ = calib_subset(64, seed=4)
    assert a.shape == (64, 1, 28, 28) and torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_make_loader_batches() -> None:
    batches = list(make_loader("test", batch_size=128, limit=300))
    assert [len(xb) for xb, _ in batches] == [128, 128, 44]
    xb, yb = batches[0]
    assert xb.shape == (128, 1, 28, 28) and yb.dtype == torch.int64
    first = next(iter(make_loader("train", batch_size=16, limit=1000, seed=1)))[1]
    again = next(iter(make_loader("train", batch_size=16, limit=1000, seed=1)))[1]
    assert torch.equal(first, again)


def test_missing_dataset_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TVM_MPQ_FMNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist.*setup.sh"):
        load_fashion_mnist("test")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid")


def test_evaluate_module_and_numpy_callable() -> None:
    torch.manual_seed(0)
    m = build("resnet8").eval()
    x, y = load_fashion_mnist("test", limit=130)
    acc = evaluate(m, x, y, batch_size=64)

    def np_fn(batch: np.ndarray) -> np.ndarray:
        assert isinstance(batch, np.ndarray) and len(batch) == 64  # padded to a static batch
        with torch.no_grad():
            return m(torch.from_numpy(batch)).numpy()

    assert evaluate(np_fn, x.numpy(), y.numpy(), batch_size=64, pad_last=True) == acc
    # a Relax VM returns a 1-tuple; constant logits predict class 0 everywhere
    zeros = evaluate(lambda b: (torch.zeros(len(b), 10),), x, y)
    assert zeros == pytest.approx(float((y == 0).float().mean()))
    # the per-image outcomes behind it: constant logits are right exactly on class 0
    ok = correct_predictions(lambda b: (torch.zeros(len(b), 10),), x, y)
    assert ok.dtype == bool and np.array_equal(ok, (y == 0).numpy())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=2, max_size=400))
def test_paired_drop_se_counts_disagreements(pairs) -> None:
    a, b = (np.array(v, dtype=bool) for v in zip(*pairs, strict=True))
    n = len(a)
    worse, better = int((a & ~b).sum()), int((~a & b).sum())  # fp32 right only / plan only
    drop = (worse - better) / n
    # variance of the per-image differences (1, -1 or 0), unbiased, over n
    want = np.sqrt(((worse + better) / n - drop ** 2) * n / (n - 1) / n)
    assert paired_drop_se(a, b) == pytest.approx(want, abs=1e-12)
    assert paired_drop_se(a, a) == 0.0  # the same outcomes: no noise in the difference


def test_paired_drop_se_rejects_mismatched_outcomes() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        paired_drop_se(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(ValueError, match="at least 2"):
        paired_drop_se(np.ones(1, bool), np.zeros(1, bool))


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_accuracy(name: str) -> None:
    assert checkpoint_path(name).is_file(), f"{name}: checkpoint not committed"
    assert checkpoint_path(name).stat().st_size < 2_000_000
    m, info = load_pretrained(name)
    assert not m.training
    assert info["model"] == name and "train_cmd" in info and info["test_acc"] > 0.85
    x, y = load_fashion_mnist("test", limit=1000)
    acc = evaluate(m, x, y, batch_size=500)
    assert abs(acc - info["test_acc_first1000"]) <= 0.005, (acc, info)


def test_module_exports() -> None:
    assert "build" in models.__all__ and "evaluate" in data.__all__
