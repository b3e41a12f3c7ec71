"""Train the bundled small-ResNet shapes classifier and export ``suites/assets/resnet_shapes.onnx``.

Dev-only (needs torch). Data: the class-folder set from ``tools/make_dataset.py`` (train split).
Preprocessing at evaluation is the classic pipeline through ``harness.data.preprocess``: resize the
short side to 72, centre-crop 64, RGB, (x - 127.5) / 127.5. Training pre-decodes every image once
with that same resize (short side 72, centre crop 72x72 so there is room to jitter), then takes
random 64x64 crops of randomly rescaled copies. No 90-degree rotations (they swap stripe classes).

    python tools/train_classifier.py --data /tmp/shapes/classification \
        --out suites/assets/resnet_shapes.onnx --epochs 12 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_common import (  # noqa: E402
    Checkpointer, Timer, conv_bn, cosine_lr, count_params, export_onnx, schedule_progress, setup, write_json,
)  # noqa: E402

from harness.data import ClassFolderDataset, PreprocessSpec, preprocess  # noqa: E402

CROP = 64
SHORT_SIDE = 72
PREPROCESS = PreprocessSpec(size=(CROP, CROP), channel_order="rgb", resize="short_side", short_side=SHORT_SIDE,
                            mean=(127.5,), std=(127.5,))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride, act="relu")
        self.conv2 = conv_bn(cout, cout, 3, 1, act="none")
        self.short = None if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act="none")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.short is None else self.short(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class SmallResNet(nn.Module):
    """Stem 3x3/2 (16 ch), 4 stages of one BasicBlock each (16, 32, 64, 128), GAP, FC."""

    def __init__(self, num_classes: int = 12, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3, 2, act="relu")  # 64 -> 32
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))  # 32, 16, 8, 4
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def load_split(root: Path, cache: Path | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """uint8 RGB [N, 72, 72, 3] (short side 72, centre crop 72) + labels, decoded once."""
    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["images"], z["labels"], tuple(z["classes"])
    ds = ClassFolderDataset(root)
    spec = PreprocessSpec(size=(SHORT_SIDE, SHORT_SIDE), channel_order="rgb", resize="short_side",
                          short_side=SHORT_SIDE, dtype="uint8", layout="NHWC")
    images = np.zeros((len(ds), SHORT_SIDE, SHORT_SIDE, 3), np.uint8)
    labels = np.zeros(len(ds), np.int64)
    for i, s in enumerate(ds):
        images[i], _ = preprocess(s.read(), spec)
        labels[i] = s.target
    if cache is not None:
        np.savez(cache, images=images, labels=labels, classes=np.array(ds.class_names))
    return images, labels, ds.class_names


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = int(rng.integers(66, 81))  # rescale 72 -> 66..80, then a random 64 crop
    if s != img.shape[0]:
        img = cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR)
    y, x = int(rng.integers(0, s - CROP + 1)), int(rng.integers(0, s - CROP + 1))
    img = img[y : y + CROP, x : x + CROP]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def colour_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)  # noqa: E731
    x = x * u(0.75, 1.25) + u(-20, 20)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3) + mean
    perm = torch.rand(n, generator=gen) < 0.5
    if perm.any():
        x[perm] = x[perm][:, torch.randperm(3, generator=gen)]
    return x.clamp(0, 255)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 on the centre 64 crop of pre-decoded 72x72 images (= the harness preprocessing)."""
    model.eval()
    o = (SHORT_SIDE - CROP) // 2
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 256):
            x = torch.from_numpy(images[i : i + 256, o : o + CROP, o : o + CROP]).permute(0, 3, 1, 2).float()
            correct += (model((x - 127.5) / 127.5).argmax(1).numpy() == labels[i : i + 256]).sum()
    return correct / len(images)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="classification root holding train/ (and val/)")
    ap.add_argument("--out", type=Path, default=Path("suites/assets/resnet_shapes.onnx"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt", type=Path, default=Path("/tmp/resnet_shapes.ckpt"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/resnet_train_cache.npz"))
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="time budget: the cosine schedule runs on max(step fraction, time fraction) and "
                    "training stops when either reaches 1 (the machine is shared, so epochs are unpredictable)")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args(argv)
    setup(args.seed, args.threads)

    model = SmallResNet()
    print(f"params {count_params(model)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    ckpt = Checkpointer(args.ckpt)
    start_epoch = 0
    prior_minutes = 0.0
    state = ckpt.load()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch = state["epoch"] + 1
        prior_minutes = state.get("minutes", 0.0)
        print(f"resumed at epoch {start_epoch}", flush=True)

    timer = Timer()
    val = None
    if not args.export_only and start_epoch < args.epochs:
        images, labels, classes = load_split(args.data / "train", args.cache)
        if (args.data / "val").is_dir():
            val = load_split(args.data / "val", args.cache.with_name(args.cache.stem + "_val.npz"))
        print(f"loaded {len(images)} train images ({len(classes)} classes) in {timer.minutes():.2f} min", flush=True)
        n = len(images)
        steps = n // args.batch
        total = steps * args.epochs
        done = False
        for epoch in range(start_epoch, args.epochs):
            rng = np.random.default_rng([args.seed, epoch])
            gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            model.train()
            order = rng.permutation(n)
            tot = 0.0
            for it in range(steps):
                step = epoch * steps + it
                progress = schedule_progress(step, total, prior_minutes + timer.minutes(), args.max_minutes)
                if progress >= 1.0:
                    done = True
                    break
                lr = cosine_lr(args.lr, progress, step, steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = order[it * args.batch : (it + 1) * args.batch]
                x = torch.from_numpy(np.stack([augment(images[j], rng) for j in idx])).permute(0, 3, 1, 2).float()
                x = (colour_jitter(x, gen) - 127.5) / 127.5
                loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]), label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item()
            ckpt.save(model=model.state_dict(), opt=opt.state_dict(), epoch=epoch,
                      minutes=prior_minutes + timer.minutes(), steps=step + 1)
            acc = evaluate(model, *val[:2]) if val is not None else float("nan")
            print(f"epoch {epoch + 1}/{args.epochs} loss {tot / max(1, it):.3f} val top-1 {acc:.4f} "
                  f"elapsed {prior_minutes + timer.minutes():.1f} min (step {step + 1})", flush=True)
            if done:
                print("schedule finished (time budget); exporting", flush=True)
                break

    model.eval()
    export_onnx(model, torch.zeros(1, 3, CROP, CROP), args.out, input_name="input", output_names=["logits"])
    write_json(args.out.with_suffix(".json"), {
        "model": args.out.name,
        "input": {"name": "input", "shape": [1, 3, CROP, CROP]},
        "outputs": {"logits": [1, 12]},
        "classes": sorted(p.name for p in (args.data / "train").iterdir() if p.is_dir()) if (args.data / "train").is_dir() else None,
        "preprocess": PREPROCESS.to_dict(),
        "params": count_params(model),
    })
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {timer.minutes():.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
