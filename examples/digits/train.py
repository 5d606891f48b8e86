"""Digits classifier: a small real PyTorch job that shows everything hybridml wires up.

- parameters come from the job file (``HML_PARAMS``) or the command line;
- metrics, a confusion matrix and the model land in the MLflow run hml opened
  (``MLFLOW_RUN_ID``), so this file never names a tracking server;
- a checkpoint is written every epoch, locally and as an MLflow artifact, and training
  resumes from the latest one, so a retry on another host loses no finished epoch;
- under torchrun (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel, gloo on CPU and
  nccl on GPU; rank 0 alone talks to MLflow;
- with an input ``digits`` (``--set inputs.digits=digits@v1``, a snapshot that
  ``publish_data.py`` seeds) it reads ``$HML_INPUT_DIGITS/digits.csv``; without one, the copy
  scikit-learn ships, so the demo needs no object store.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

CHECKPOINT = "checkpoints/latest.pt"


def parse_args() -> argparse.Namespace:
    params = json.loads(os.environ.get("HML_PARAMS", "{}"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=int(params.get("epochs", 15)))
    p.add_argument("--lr", type=float, default=float(params.get("lr", 0.003)))
    p.add_argument("--batch-size", type=int, default=int(params.get("batch_size", 64)))
    p.add_argument("--hidden", type=int, default=int(params.get("hidden", 128)))
    p.add_argument("--seed", type=int, default=int(params.get("seed", 0)))
    p.add_argument(
        "--epoch-sleep",
        type=float,
        default=float(params.get("epoch_sleep", 0)),
        help="seconds to pause after each epoch (for fault-injection tests)",
    )
    p.add_argument("--checkpoint-dir", default=os.environ.get("HML_CHECKPOINT_DIR", "."))
    return p.parse_args()


def load() -> tuple[np.ndarray, np.ndarray]:
    """The dataset snapshot hml staged for the job, else scikit-learn's own copy."""
    staged = os.environ.get("HML_INPUT_DIGITS")
    if not staged:
        return load_digits(return_X_y=True)
    table = np.loadtxt(Path(staged) / "digits.csv", delimiter=",")
    print(f"data: {len(table)} samples from {staged}", flush=True)
    return table[:, :-1], table[:, -1].astype(np.int64)


def data(seed: int) -> tuple[TensorDataset, TensorDataset]:
    x, y = load()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6

    def to_ds(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        return TensorDataset(
            torch.tensor((xs - mean) / std, dtype=torch.float32), torch.tensor(ys, dtype=torch.long)
        )

    return to_ds(x_train, y_train), to_ds(x_test, y_test)


def model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def evaluate(net: nn.Module, ds: TensorDataset, device: torch.device) -> tuple[float, np.ndarray]:
    net.eval()
    with torch.no_grad():
        pred = net(ds.tensors[0].to(device)).argmax(1).cpu().numpy()
    net.train()
    truth = ds.tensors[1].numpy()
    return float((pred == truth).mean()), confusion_matrix(truth, pred, labels=list(range(10)))


def load_checkpoint(path: Path, tracking: bool) -> dict | None:
    """The latest checkpoint: on this disk, else from the MLflow run (another host wrote it)."""
    if not path.exists() and tracking:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = mlflow.artifacts.download_artifacts(
                run_id=os.environ["MLFLOW_RUN_ID"],
                artifact_path=CHECKPOINT,
                dst_path=str(path.parent),
            )
            path = Path(got)
            print(f"fetched checkpoint from the tracking server: {CHECKPOINT}", flush=True)
        except Exception:  # no checkpoint logged yet: a fresh start
            return None
    return torch.load(path, map_location="cpu") if path.exists() else None


def save_confusion(cm: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title="digits: test confusion matrix",
        xticks=range(10),
        yticks=range(10),
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    lead = rank == 0
    tracking = "MLFLOW_RUN_ID" in os.environ
    torch.manual_seed(args.seed)

    train_ds, test_ds = data(args.seed)
    net = model(args.hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    run_id = os.environ.get("MLFLOW_RUN_ID", "standalone")
    ckpt_path = Path(args.checkpoint_dir) / ".checkpoints" / run_id / "latest.pt"
    start = 0
    state = load_checkpoint(ckpt_path, tracking)
    if state:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        print(f"resuming from checkpoint after epoch {state['epoch']}", flush=True)
    ddp = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    sampler = DistributedSampler(train_ds, shuffle=True, seed=args.seed) if world > 1 else None
    loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler)
    if lead:
        mlflow.start_run()
    if lead and not state:
        mlflow.log_params({"world_size": world, "device": device.type, "train_size": len(train_ds)})
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start, args.epochs):
        if sampler:
            sampler.set_epoch(epoch)
        total, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            out = ddp(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        test_acc, _ = evaluate(net, test_ds, device)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / seen:.4f} "
            f"train_acc {correct / seen:.3f} test_acc {test_acc:.3f}",
            flush=True,
        )
        if lead:
            mlflow.log_metrics(
                {
                    "train_loss": total / seen,
                    "train_accuracy": correct / seen,
                    "test_accuracy_epoch": test_acc,
                },
                step=epoch,
            )
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                ckpt_path,
            )
            if tracking:
                mlflow.log_artifact(str(ckpt_path), artifact_path="checkpoints")
        if args.epoch_sleep:
            import time

            time.sleep(args.epoch_sleep)
    if lead:
        acc, cm = evaluate(net, test_ds, device)
        mlflow.log_metric("test_accuracy", acc)
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "confusion_matrix.png"
            save_confusion(cm, png)
            mlflow.log_artifact(str(png))
        mlflow.pytorch.log_model(
            net.cpu(),
            name="model",
            input_example=test_ds.tensors[0][:4].numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "scikit-learn"],
        )
        print(f"test accuracy {acc:.4f}", flush=True)
        mlflow.end_run()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
