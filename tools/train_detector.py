"""Train the bundled SSD-lite shapes detector and export ``suites/assets/ssdlite_shapes.onnx``.

Dev-only (needs torch). Data: a VOC2007-layout set from ``tools/make_dataset.py`` (train split).
The priors come from ``harness.tasks.prior_boxes`` with the Caffe PriorBox parameters in
``PRIOR_LAYERS``, and targets from ``harness.tasks.encode_boxes``, so training and the harness's
decoder cannot disagree about the anchor layout. The prior parameters and preprocessing are also
written next to the model (``ssdlite_shapes.json``) for the evaluation script and the tests.

    python tools/train_detector.py --data /tmp/shapes/VOCdevkit/VOC2007 \
        --out suites/assets/ssdlite_shapes.onnx --epochs 40 --seed 0

Fine-tune leg: resume from ``--ckpt`` and give only this leg its own learning-rate schedule
(``--leg-lr``, ``--leg-schedule``), optionally measuring val mAP after each epoch and exporting the
epoch with the best val mAP (``--val-every``)::

    python tools/train_detector.py --data /tmp/shapes/VOCdevkit/VOC2007 --batch 16 --seed 0 \
        --epochs 73 --leg-lr 4e-4 --leg-schedule cosine --val-every 1
"""

from __future__ import annotations

import argparse
import math
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
    Checkpointer, Timer, conv_bn, cosine_lr, count_params, dw_separable, export_onnx, schedule_progress, setup,
    write_json,
)  # noqa: E402

from harness.data import PreprocessSpec, VOCDataset, preprocess  # noqa: E402
from harness.data.boxes import normalize_xyxy, voc_to_xyxy  # noqa: E402
from harness.tasks import PriorBoxLayer, center_to_corner, encode_boxes, prior_boxes  # noqa: E402

CLASSES = ("circle", "cross", "ring", "square", "star", "triangle")
INPUT_SIZE = (160, 160)  # (W, H)
VARIANCES = (0.1, 0.2)
PRIOR_CLIP = "none"
PREPROCESS = PreprocessSpec(size=INPUT_SIZE, channel_order="rgb", resize="stretch", mean=(127.5,), std=(127.5,))

# Caffe PriorBox parameters, one entry per head (feature map), sizes in input pixels.
PRIOR_LAYERS: list[dict] = [
    dict(min_sizes=[10, 20], max_sizes=[15, 28], aspect_ratios=[2.0], flip=True, stride=8, offset=0.5),
    dict(min_sizes=[32], max_sizes=[48], aspect_ratios=[2.0], flip=True, stride=16, offset=0.5),
    dict(min_sizes=[56], max_sizes=[80], aspect_ratios=[2.0], flip=True, stride=32, offset=0.5),
    dict(min_sizes=[96], max_sizes=[140], aspect_ratios=[2.0], flip=True, feature_size=[3, 3], offset=0.5),
]


def prior_layers() -> list[PriorBoxLayer]:
    out = []
    for p in PRIOR_LAYERS:
        kw = dict(p)
        if "feature_size" in kw:
            kw["feature_size"] = tuple(kw["feature_size"])
        out.append(PriorBoxLayer(**kw))
    return out


def make_priors() -> np.ndarray:
    return prior_boxes(prior_layers(), image_size=INPUT_SIZE, clip=PRIOR_CLIP)


# --------------------------------------------------------------------------------------------- model
class SSDLite(nn.Module):
    """MobileNet-v1 style backbone (depthwise-separable, BN, ReLU6) with SSD-lite heads on 4 maps."""

    def __init__(self, num_classes: int, anchors: list[int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stage8 = nn.Sequential(  # 160 -> 20 (stride 8)
            conv_bn(3, 16, 3, 2),  # 80
            dw_separable(16, 32, 2),  # 40
            dw_separable(32, 48, 1),
            dw_separable(48, 64, 2),  # 20
            dw_separable(64, 96, 1),
            dw_separable(96, 96, 1),
        )
        self.stage16 = nn.Sequential(dw_separable(96, 128, 2), dw_separable(128, 128, 1))  # 10
        self.stage32 = nn.Sequential(dw_separable(128, 128, 2), dw_separable(128, 128, 1))  # 5
        self.stage64 = nn.Sequential(dw_separable(128, 128, 2))  # 3
        chans = [96, 128, 128, 128]
        self.loc = nn.ModuleList(self._head(c, k * 4) for c, k in zip(chans, anchors))
        self.conf = nn.ModuleList(self._head(c, k * num_classes) for c, k in zip(chans, anchors))
        self.export_mode = False

    @staticmethod
    def _head(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(conv_bn(cin, cin, 3, 1, groups=cin), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.stage8(x)
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        f64 = self.stage64(f32)
        n = x.shape[0] if not self.export_mode else 1
        locs, confs = [], []
        for f, lh, ch in zip((f8, f16, f32, f64), self.loc, self.conf):
            # NCHW -> NHWC so priors are ordered (row, column, anchor), as Caffe's PriorBox emits them.
            locs.append(lh(f).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(ch(f).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        loc = torch.cat(locs, 1)
        conf = torch.cat(confs, 1)
        if self.export_mode:
            return torch.softmax(conf, dim=-1), loc
        return conf, loc


# ---------------------------------------------------------------------------------------------- data
def load_split(root: Path, split: str, cache: Path | None) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Pre-decode a split once: uint8 RGB [N, 160, 160, 3] (harness stretch resize) + normalised boxes."""
    if cache is not None and cache.exists():
        z = np.load(cache)  # flat arrays + per-image counts: no object arrays, so no pickle
        splits = np.cumsum(z["counts"])[:-1]
        return z["images"], np.split(z["boxes"], splits), np.split(z["labels"], splits)
    ds = VOCDataset(root, split=split, classes=CLASSES)
    spec = PreprocessSpec(size=INPUT_SIZE, channel_order="rgb", resize="stretch", dtype="uint8", layout="NHWC")
    images = np.zeros((len(ds), INPUT_SIZE[1], INPUT_SIZE[0], 3), np.uint8)
    boxes, labels = [], []
    for i, s in enumerate(ds):
        img, _ = preprocess(s.read(), spec)
        images[i] = img
        t = s.target
        # VOC 1-based inclusive -> continuous -> fractions of the original image (= of the stretched input).
        boxes.append(normalize_xyxy(voc_to_xyxy(t.boxes), t.image_size).astype(np.float32))
        labels.append(t.labels.astype(np.int64))
    if cache is not None:
        counts = np.array([len(b) for b in boxes], np.int64)
        np.savez(cache, images=images, counts=counts,
                 boxes=np.concatenate(boxes).reshape(-1, 4), labels=np.concatenate(labels))
    return images, boxes, labels


def augment(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Expand (zoom out), SSD random crop (zoom in), horizontal flip; returns a 160x160 image."""
    h, w = img.shape[:2]
    b = boxes.copy()
    if rng.random() < 0.3:
        r = rng.uniform(1.0, 1.6)
        ch, cw = int(h * r), int(w * r)
        canvas = np.empty((ch, cw, 3), np.uint8)
        canvas[:] = img.reshape(-1, 3).mean(0).astype(np.uint8)
        top, left = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
        canvas[top : top + h, left : left + w] = img
        b = (b * [w, h, w, h] + [left, top, left, top]) / [cw, ch, cw, ch]
        img, h, w = canvas, ch, cw
    if rng.random() < 0.5 and len(b):
        for _ in range(10):
            s = rng.uniform(0.5, 1.0)
            ar = rng.uniform(0.75, 1.33)
            cw = min(1.0, s * math.sqrt(ar))
            ch = min(1.0, s / math.sqrt(ar))
            x0, y0 = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
            centres = (b[:, :2] + b[:, 2:]) / 2
            keep = (centres[:, 0] > x0) & (centres[:, 0] < x0 + cw) & (centres[:, 1] > y0) & (centres[:, 1] < y0 + ch)
            if not keep.any():
                continue
            nb = b[keep].copy()
            nb[:, 0::2] = np.clip((nb[:, 0::2] - x0) / cw, 0, 1)
            nb[:, 1::2] = np.clip((nb[:, 1::2] - y0) / ch, 0, 1)
            px0, py0 = int(round(x0 * w)), int(round(y0 * h))
            px1, py1 = max(px0 + 8, int(round((x0 + cw) * w))), max(py0 + 8, int(round((y0 + ch) * h)))
            img = img[py0:py1, px0:px1]
            b, labels = nb, labels[keep]
            break
    if img.shape[:2] != (INPUT_SIZE[1], INPUT_SIZE[0]):
        img = cv2.resize(img, INPUT_SIZE, interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        b = b.copy()
        b[:, [0, 2]] = 1.0 - b[:, [2, 0]]
    return np.ascontiguousarray(img), b.astype(np.float32), labels


def colour_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x: float [N, 3, H, W] in 0..255. Brightness, contrast, saturation, channel permutation."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)  # noqa: E731
    x = x * u(0.75, 1.25) + u(-20, 20)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * u(0.6, 1.4) + grey
    perm = torch.rand(n, generator=gen) < 0.5
    if perm.any():
        order = torch.randperm(3, generator=gen)
        x[perm] = x[perm][:, order]
    return x.clamp(0, 255)


# ---------------------------------------------------------------------------------------------- loss
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


def match(gt: np.ndarray, labels: np.ndarray, priors: np.ndarray, priors_corner: torch.Tensor, thr: float = 0.5):
    """SSD matching: IoU >= thr, plus the best prior of every ground truth. Returns (conf [P], loc [P, 4])."""
    p = priors.shape[0]
    if len(gt) == 0:
        return torch.zeros(p, dtype=torch.long), torch.zeros(p, 4)
    g = torch.from_numpy(gt)
    iou = box_iou(g, priors_corner)  # [G, P]
    best_gt_iou, best_gt = iou.max(0)
    best_prior = iou.argmax(1)
    best_gt_iou[best_prior] = 2.0
    best_gt[best_prior] = torch.arange(len(gt))
    conf = torch.from_numpy(labels)[best_gt] + 1
    conf[best_gt_iou < thr] = 0
    loc = torch.from_numpy(encode_boxes(gt[best_gt.numpy()], priors, variances=VARIANCES))
    return conf, loc


def multibox_loss(conf_logits, loc_pred, conf_t, loc_t, neg_pos: int = 3):
    pos = conf_t > 0
    n_pos = pos.sum().clamp(min=1).float()
    loss_l = F.smooth_l1_loss(loc_pred[pos], loc_t[pos], reduction="sum")
    ce = F.cross_entropy(conf_logits.reshape(-1, conf_logits.shape[-1]), conf_t.reshape(-1), reduction="none")
    ce = ce.view(conf_t.shape)
    with torch.no_grad():
        mining = ce.clone()
        mining[pos] = 0
        _, idx = mining.sort(1, descending=True)
        _, rank = idx.sort(1)
        n_neg = (neg_pos * pos.sum(1, keepdim=True)).clamp(min=neg_pos, max=pos.shape[1] - 1)
        neg = rank < n_neg
    loss_c = ce[pos | neg].sum()
    return loss_l / n_pos, loss_c / n_pos


# --------------------------------------------------------------------------------------------- main
def leg_lr(base_lr: float, schedule: str, progress: float) -> float:
    """Learning rate of a fine-tune leg at ``progress`` (0..1 of the leg): no warm-up, the optimiser is warm."""
    if schedule == "constant":
        return base_lr
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def val_map(model: SSDLite, data: Path, onnx_path: Path, threads: int) -> tuple[float, dict[str, float]]:
    """fp32 mAP of ``model`` on the ``val`` split of ``data``, through the same ONNX export and harness
    pipeline as ``tools/evaluate_assets.py`` (the scratch export goes to ``onnx_path``, not to ``--out``)."""
    import evaluate_assets  # tools/ is on sys.path; no torch inside, so the import is cheap

    was_training = model.training
    model.eval()
    model.export_mode = True
    try:
        export_onnx(model, torch.zeros(1, 3, INPUT_SIZE[1], INPUT_SIZE[0]), onnx_path, input_name="input",
                    output_names=["scores", "boxes"])
        write_json(onnx_path.with_suffix(".json"), sidecar(onnx_path, make_priors(), model))
        res = evaluate_assets.evaluate_detector(onnx_path, data, split="val", threads=threads)
    finally:
        model.export_mode = False
        model.train(was_training)
    return res["map"], res["ap"]


def sidecar(out: Path, priors: np.ndarray, model: nn.Module) -> dict:
    """The JSON written next to the model: what ``tools/evaluate_assets.py`` and the tests read."""
    return {
        "model": out.name,
        "input": {"name": "input", "shape": [1, 3, INPUT_SIZE[1], INPUT_SIZE[0]]},
        "outputs": {"scores": [1, int(priors.shape[0]), len(CLASSES) + 1], "boxes": [1, int(priors.shape[0]), 4]},
        "classes": list(CLASSES),
        "background_label": 0,
        "preprocess": PREPROCESS.to_dict(),
        "prior_boxes": {"image_size": list(INPUT_SIZE), "clip": PRIOR_CLIP, "variances": list(VARIANCES),
                        "layers": PRIOR_LAYERS},
        "num_priors": int(priors.shape[0]),
        "params": count_params(model),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="VOC2007 root with a train split")
    ap.add_argument("--out", type=Path, default=Path("suites/assets/ssdlite_shapes.onnx"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt", type=Path, default=Path("/tmp/ssdlite_shapes.ckpt"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ssdlite_train_cache.npz"))
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="time budget: the cosine schedule runs on max(step fraction, time fraction) and "
                    "training stops when either reaches 1 (the machine is shared, so epochs are unpredictable)")
    ap.add_argument("--leg-lr", type=float, default=None,
                    help="fine-tune leg: instead of the global cosine (--lr, warm-up, over all --epochs), this leg "
                    "(resume epoch .. --epochs) starts at LEG_LR without warm-up and follows --leg-schedule over "
                    "its own steps; with --max-minutes (still the cumulative total) over the minutes left in "
                    "the budget, whichever is further along")
    ap.add_argument("--leg-schedule", choices=("cosine", "constant"), default="cosine",
                    help="with --leg-lr: cosine from LEG_LR to 0 over the leg, or LEG_LR throughout")
    ap.add_argument("--val-every", type=int, default=0,
                    help="measure fp32 val mAP (val split of --data, harness pipeline of tools/evaluate_assets.py) "
                    "before this leg and after every N of its epochs and at its end; export the weights with the "
                    "best val mAP (kept in <ckpt>.best) instead of the last ones. 0 = off, export the last weights")
    ap.add_argument("--export-only", action="store_true",
                    help="export from the checkpoint, no training (with --val-every: from <ckpt>.best, as written by "
                    "the last leg run with --val-every, if present)")
    args = ap.parse_args(argv)
    setup(args.seed, args.threads)
    best_path = args.ckpt.with_suffix(".best")  # best-val weights of the leg (--val-every)
    val_onnx = args.ckpt.with_name(args.ckpt.stem + "_val.onnx")  # scratch export for the val measurements

    priors = make_priors()
    priors_corner = torch.from_numpy(center_to_corner(priors))
    anchors = [prior_layers()[i].num_priors_per_cell for i in range(len(PRIOR_LAYERS))]
    model = SSDLite(len(CLASSES) + 1, anchors)
    print(f"params {count_params(model)}  priors {priors.shape[0]}", flush=True)
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
    export_state = None  # None: export the current weights
    if not args.export_only and start_epoch < args.epochs:
        images, boxes, labels = load_split(args.data, "train", args.cache)
        print(f"loaded {len(images)} train images in {timer.minutes():.2f} min", flush=True)
        n = len(images)
        steps_per_epoch = n // args.batch
        total = steps_per_epoch * args.epochs
        warm = steps_per_epoch
        leg_first_step = start_epoch * steps_per_epoch
        leg_steps = total - leg_first_step
        leg_budget = None if args.max_minutes is None else max(1e-6, args.max_minutes - prior_minutes)
        best = None  # (val mAP, epoch) of the best weights of this leg; epoch start_epoch - 1 = the resumed ones
        if args.val_every > 0:
            val_minutes = Timer()
            m, ap_cls = val_map(model, args.data, val_onnx, args.threads)
            best = (m, start_epoch - 1)
            torch.save({"model": model.state_dict(), "epoch": start_epoch - 1, "val_map": m, "val_ap": ap_cls},
                       best_path)
            print(f"val mAP {m:.4f} before the leg (epoch {start_epoch}) ({val_minutes.minutes() * 60:.0f} s)",
                  flush=True)
        done = False
        for epoch in range(start_epoch, args.epochs):
            rng = np.random.default_rng([args.seed, epoch])
            gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            model.train()
            order = rng.permutation(n)
            tot_l = tot_c = 0.0
            for it in range(steps_per_epoch):
                step = epoch * steps_per_epoch + it
                if args.leg_lr is None:
                    progress = schedule_progress(step, total, prior_minutes + timer.minutes(), args.max_minutes)
                else:
                    progress = schedule_progress(step - leg_first_step, leg_steps, timer.minutes(), leg_budget)
                if progress >= 1.0:
                    done = True
                    break
                if args.leg_lr is None:
                    lr = cosine_lr(args.lr, progress, step, warm)
                else:
                    lr = leg_lr(args.leg_lr, args.leg_schedule, progress)
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = order[it * args.batch : (it + 1) * args.batch]
                batch_img, conf_t, loc_t = [], [], []
                for j in idx:
                    img, b, lab = augment(images[j], boxes[j], labels[j], rng)
                    batch_img.append(img)
                    c, lt = match(b, lab, priors, priors_corner)
                    conf_t.append(c)
                    loc_t.append(lt)
                x = torch.from_numpy(np.stack(batch_img)).permute(0, 3, 1, 2).float()
                x = (colour_jitter(x, gen) - 127.5) / 127.5
                conf_logits, loc_pred = model(x)
                ll, lc = multibox_loss(conf_logits, loc_pred, torch.stack(conf_t), torch.stack(loc_t))
                loss = ll + lc
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_l += ll.item()
                tot_c += lc.item()
                if it % 25 == 0:
                    print(f"  step {it}/{steps_per_epoch} loc {ll.item():.3f} conf {lc.item():.3f} "
                          f"{timer.minutes():.1f} min", flush=True)
            ckpt.save(model=model.state_dict(), opt=opt.state_dict(), epoch=epoch,
                      minutes=prior_minutes + timer.minutes(), steps=step + 1)
            print(
                f"epoch {epoch + 1}/{args.epochs} loc {tot_l / max(1, it):.3f} conf {tot_c / max(1, it):.3f} "
                f"lr {lr:.2e} elapsed {prior_minutes + timer.minutes():.1f} min (step {step + 1})",
                flush=True,
            )
            last = done or epoch == args.epochs - 1
            if best is not None and ((epoch + 1 - start_epoch) % args.val_every == 0 or last):
                m, ap_cls = val_map(model, args.data, val_onnx, args.threads)
                if m > best[0]:
                    best = (m, epoch)
                    torch.save({"model": model.state_dict(), "epoch": epoch, "val_map": m, "val_ap": ap_cls},
                               best_path)
                print(f"val mAP {m:.4f} after epoch {epoch + 1} (best {best[0]:.4f} after epoch {best[1] + 1})",
                      flush=True)
            if done:
                print("schedule finished (time budget); exporting", flush=True)
                break

        if best is not None:
            export_state = torch.load(best_path, map_location="cpu", weights_only=False)
    elif args.export_only and args.val_every > 0 and best_path.exists():
        export_state = torch.load(best_path, map_location="cpu", weights_only=False)
    if export_state is not None:
        model.load_state_dict(export_state["model"])
        print(f"exporting the best-val weights: epoch {export_state['epoch'] + 1}, val mAP "
              f"{export_state['val_map']:.4f}", flush=True)

    model.eval()
    model.export_mode = True
    export_onnx(model, torch.zeros(1, 3, INPUT_SIZE[1], INPUT_SIZE[0]), args.out, input_name="input",
                output_names=["scores", "boxes"])
    write_json(args.out.with_suffix(".json"), sidecar(args.out, priors, model))
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {timer.minutes():.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
