"""Shared helpers for the dev-only training scripts (``train_detector.py``, ``train_classifier.py``).

Needs torch (dev-time only; the harness never imports ``tools/``). Everything here is small on
purpose: the two scripts are the documentation of how the bundled demo models were made.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn


def setup(seed: int, threads: int) -> None:
    """Seed every RNG and pin the thread count (the machine is shared: 2 cores)."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def conv_bn(cin: int, cout: int, k: int, stride: int, *, groups: int = 1, act: str = "relu6") -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation; BN stays a separate node in the ONNX export."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "relu":
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet v1 block: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""
    return nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1, 1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Checkpointer:
    """Saves model + optimiser + epoch after every epoch, atomically, so a killed run resumes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, **state: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


def export_onnx(model: nn.Module, dummy: torch.Tensor, out: Path, *, input_name: str, output_names: list[str]) -> None:
    """Export with opset 13, fixed batch 1, and BatchNormalization nodes kept (no constant folding)."""
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        dynamo=False,
        opset_version=13,
        input_names=[input_name],
        output_names=output_names,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
        export_params=True,
    )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    n_bn = sum(1 for node in proto.graph.node if node.op_type == "BatchNormalization")
    if n_bn == 0:
        raise RuntimeError(f"{out}: the export has no BatchNormalization nodes; the harness's BN folding needs them")


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def schedule_progress(step: int, total_steps: int, minutes: float, budget_minutes: float | None) -> float:
    """Fraction of training done: steps, or wall time against the budget, whichever is further along."""
    frac = step / max(1, total_steps)
    if budget_minutes is not None:
        frac = max(frac, minutes / budget_minutes)
    return min(1.0, frac)


def cosine_lr(base_lr: float, progress: float, step: int, warmup_steps: int) -> float:
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress)) * min(1.0, (step + 1) / max(1, warmup_steps))
