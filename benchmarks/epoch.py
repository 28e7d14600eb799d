"""One full MNIST epoch of the default CNN: wall time and peak memory, beside PyTorch.

Targets on the 2-core machine: at most 20 s per epoch, at most 1 GB peak RSS.

    DIGITS_DATA_DIR=../shared/data python benchmarks/epoch.py --repeats 3
    ... --no-torch      # the NumPy side only (PyTorch not installed)

Each measurement runs in a fresh process, so that peak RSS is that of one training
run. With PyTorch installed (``pip install torch==2.13.0``, benchmark only), each
repeat also trains the identical network in PyTorch on the same epoch (the default
CNN's batch size, the same image order, Adam, default threads), the two alternating
who goes first, so the 20 s target can be read against what PyTorch takes on the
same machine. Each run also reports the machine's steal time: the share of CPU time
the hypervisor gave to other machines while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far, from /proc/stat.

    Steal is time the hypervisor gave our virtual CPUs to other machines: these
    machines are shared, and a run with much steal measures the neighbours.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


class _Timer:
    """Wall seconds and the machine's steal fraction over a ``with`` block."""

    def __enter__(self) -> _Timer:
        self._ticks, self._start = _cpu_ticks(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        (s0, t0), (s1, t1) = self._ticks, _cpu_ticks()
        self.steal = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0


def _children_peak_rss_mb() -> float:
    """The largest peak RSS (VmHWM) of this process's running children, in MB.

    Read from /proc while they run: ``getrusage(RUSAGE_CHILDREN)`` would count a
    child started by vfork with the parent's pages, up to its exec.
    """
    peak = 0.0
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def numpy_epoch() -> dict:
    from digits.data import load_dataset
    from digits.engine.system import keep_freed_memory
    from digits.estimator import CNNClassifier
    from digits.nn.callbacks import Callback

    class ChildrenPeak(Callback):
        """The twin's peak RSS, read at the epoch's last batch while it runs."""

        peak_mb = 0.0

        def on_batch_end(self, step, logs):
            if logs["batch"] == logs["batches"]:
                self.peak_mb = _children_peak_rss_mb()

    # Its one-off `ldconfig -p` child, before anything is timed.
    keep_freed_memory()
    data = load_dataset("mnist")
    est = CNNClassifier(max_iter=1, random_state=0)
    children = ChildrenPeak()
    with _Timer() as timer:
        est.fit(data.x_train, data.y_train, callbacks=[children])
    seconds = timer.seconds
    return {
        "epoch_seconds": seconds,
        "steal": timer.steal,
        "images_per_second": len(data.x_train) / seconds,
        "peak_rss_mb": _peak_rss_mb(),
        # The twin process (digits/engine/twin.py) that trained half of each
        # batch, if one did. The shared weights count in both.
        "children_peak_rss_mb": children.peak_mb,
        "test_accuracy_after_1_epoch": est.score(data.x_test, data.y_test),
    }


def torch_epoch() -> dict:
    import torch
    from torch import nn

    from digits.data import load_dataset
    from digits.estimator import CNNClassifier

    data = load_dataset("mnist")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1024, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    order = np.random.default_rng(0).permutation(len(data.x_train))
    x = torch.from_numpy(np.asarray(data.x_train))
    y = torch.from_numpy(np.asarray(data.y_train))
    batch = CNNClassifier().batch_size  # the default CNN's
    model.train()
    with _Timer() as timer:
        for s in range(0, len(order), batch):
            idx = torch.from_numpy(order[s : s + batch])
            opt.zero_grad()
            loss_fn(model(x[idx].unsqueeze(1).float().div_(255)), y[idx]).backward()
            opt.step()
    seconds = timer.seconds
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(np.asarray(data.x_test)).unsqueeze(1).float() / 255
        pred = torch.cat(
            [model(xt[s : s + 500]).argmax(1) for s in range(0, 10000, 500)]
        )
    return {
        "epoch_seconds": seconds,
        "steal": timer.steal,
        "images_per_second": len(order) / seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "test_accuracy_after_1_epoch": float(
            (pred.numpy() == np.asarray(data.y_test)).mean()
        ),
    }


SIDES = {"numpy": numpy_epoch, "torch": torch_epoch}


def _child(side: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, __file__, "--child", side],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--child", choices=sorted(SIDES))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(SIDES[args.child]()))
        return
    sides = ["numpy"] if args.no_torch else ["numpy", "torch"]
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(args.repeats):
        # Alternate who goes first, so drift in machine load hits both sides.
        for side in sides if i % 2 == 0 else sides[::-1]:
            r = _child(side)
            results[side].append(r)
            print(
                f"run {i + 1} {side:5s}: {r['epoch_seconds']:.1f} s/epoch "
                f"(steal {r['steal']:.0%}), "
                f"{r['images_per_second']:.0f} img/s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB"
                + (
                    f" + child processes {r['children_peak_rss_mb']:.0f} MB"
                    if r.get("children_peak_rss_mb")
                    else ""
                )
                + ", test accuracy after 1 epoch "
                f"{r['test_accuracy_after_1_epoch']:.4f}",
                flush=True,
            )
    for side, rows in results.items():
        for key in ("epoch_seconds", "peak_rss_mb"):
            median = statistics.median(r[key] for r in rows)
            print(f"{side} median {key}: {median:.1f}")
    if "torch" in results:
        ratios = [
            t["epoch_seconds"] / n["epoch_seconds"]
            for n, t in zip(results["numpy"], results["torch"], strict=True)
        ]
        print(
            "PyTorch time / NumPy time per repeat: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
