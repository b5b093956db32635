#!/usr/bin/env python
"""Train a tvm_mpq model on Fashion-MNIST and save a small fp32 checkpoint.

Example (the committed MobileNetV2 checkpoint; see docs/models.md):

    .venv/bin/python scripts/train.py --model mobilenet_v2 --width 0.35 --epochs 5

The checkpoint (``tvm_mpq/zoo/weights/<model>_fmnist.pt`` by default) holds the state dict,
the build kwargs, the fp32 accuracy on the full 10k test set and on its first
1000 images, the training time and the exact command; ``tvm_mpq.zoo.models.load_pretrained``
reads it back.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tvm_mpq.zoo.fashion_mnist import MEAN, STD, evaluate, load_fashion_mnist  # noqa: E402
from tvm_mpq.zoo.models import MODELS, build, checkpoint_path  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v2", choices=sorted(MODELS))
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (width_mult)")
    p.add_argument("--last-channel", type=int, default=None,
                   help="MobileNetV2 only: width of the final 1x1 conv (default torchvision's)")
    p.add_argument("--stem-stride", type=int, default=None,
                   help="MobileNets only: stride of the first conv (default 1)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.1 for sgd, 2e-3 for adam)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--wd", type=float, default=5e-5, help="weight decay (not on BN/bias)")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--no-augment", action="store_true",
                   help="disable random crop (pad 2) + horizontal flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--contiguous", action="store_true",
                   help="keep NCHW memory format (default channels_last: ~2x faster "
                        "depthwise convs on CPU)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (default tvm_mpq/zoo/weights/<model>_fmnist.pt)")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Batched random crop (zero-padding in pixel space) and horizontal flip."""
    b, _, h, w = x.shape
    background = (0.0 - MEAN) / STD  # a black pixel after normalisation
    xp = F.pad(x, (pad, pad, pad, pad), value=background)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # b x h x 1
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # b x 1 x w
    flip = torch.rand(b, generator=gen) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    # advanced indices around a slice put the batch dims first: b x h x w x c
    out = xp[torch.arange(b)[:, None, None], :, rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """Weight decay on conv/linear weights only (decaying BN/bias hurts small nets)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    kwargs: dict = {"width_mult": args.width, "in_channels": 1, "num_classes": 10}
    if args.last_channel is not None:
        kwargs["last_channel"] = args.last_channel
    if args.stem_stride is not None:
        kwargs["stem_stride"] = args.stem_stride
    model = build(args.model, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    out = args.out or checkpoint_path(args.model)
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    model = model.to(memory_format=fmt)

    x_train, y_train = load_fashion_mnist("train", args.limit)
    x_test, y_test = load_fashion_mnist("test")
    n = len(x_train)
    steps_per_epoch = n // args.batch_size  # drop the last partial batch (BN stability)
    total_steps = steps_per_epoch * args.epochs

    lr = args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else 2e-3)
    groups = param_groups(model, args.wd)
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=lr)
    warmup = min(args.warmup_steps, total_steps // 4)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(args.seed)
    cmd = "python scripts/train.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"[train] {args.model} {kwargs} params={n_params} steps={total_steps} lr={lr} "
          f"opt={args.optimizer} threads={args.threads}", flush=True)

    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if not args.no_augment:
                xb = augment(xb, gen)
            xb = xb.contiguous(memory_format=fmt)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            if (i + 1) % 100 == 0:
                print(f"[train] epoch {epoch + 1}/{args.epochs} step {i + 1}/{steps_per_epoch} "
                      f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f} "
                      f"lr {sched.get_last_lr()[0]:.4g} {time.time() - t0:.0f}s", flush=True)
        print(f"[train] epoch {epoch + 1} done: train loss {loss_sum / seen:.4f} "
              f"acc {correct / seen:.4f} ({time.time() - t0:.0f}s)", flush=True)
    train_time = time.time() - t0

    model.eval()
    test_acc = evaluate(model, x_test, y_test, batch_size=500)
    test_acc_1k = evaluate(model, x_test[:1000], y_test[:1000], batch_size=500)
    print(f"[train] fp32 test accuracy {test_acc:.4f} (10k), {test_acc_1k:.4f} (first 1000); "
          f"training took {train_time:.0f}s", flush=True)

    ckpt = {
        "model": args.model,
        "kwargs": kwargs,
        "state_dict": {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
        "dataset": "fashion-mnist",
        "test_acc": test_acc,
        "test_acc_first1000": test_acc_1k,
        "num_params": n_params,
        "epochs": args.epochs,
        "train_time_s": round(train_time, 1),
        "train_cmd": cmd,
        "torch_version": str(torch.__version__),
        "host": f"{platform.machine()}, {args.threads} threads",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    print(f"[train] saved {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
