"""Fine-tuning throughput: training images/s (loss + backward + AdamW, augmentation included) and
whole-volume inference time, for the quick-profile networks.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/bench_finetune.py [--archs unet transunet] \
        [--encoder unet_tiny] [--batch-size 32] [--steps 30] [--device cpu] [--out results/bench/finetune.json]

Use it to size --steps: a run takes about steps * batch / (images/s) seconds plus ~15 s of
loading and evaluation.
"""
import argparse
import json
import time

import torch

import engine
import models
import scans
from atomicio import write_json
from finetune.data import TrainSlices
from finetune.inference import Inference
from finetune.losses import SegmentationLoss
from scans.augment import segmentation_augment


def bench(arch, encoder, loaded, batch_size, steps, device):
    kw = {"img_size": (48, 64)} if arch == "transunet" else {}
    model = models.create_segmenter(arch, encoder, 3, **kw).to(device)
    loss_fn = SegmentationLoss("ce_dice", 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ds = TrainSlices(loaded, (48, 64), 2, segmentation_augment("default"))
    sampler = engine.ResumableSampler(len(ds), batch_size).set_range(0, steps + 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True)
    it = iter(loader)
    model.train()
    for i in range(steps + 3):
        if i == 3:  # warm-up steps not timed
            t0 = time.perf_counter()
        x, y = (t.to(device) for t in next(it))
        loss, _ = loss_fn(model(x), y)
        engine.optimizer_step(loss, opt, scaler)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train = steps * batch_size / (time.perf_counter() - t0)
    model.eval()
    t0 = time.perf_counter()
    for c in loaded[:10]:
        Inference().volume(model, c.image, device)
    per_volume = (time.perf_counter() - t0) / min(10, len(loaded))
    return {"arch": arch, "encoder": encoder, "params": models.count_parameters(model),
            "train_images_per_s": round(train, 1), "inference_s_per_volume": round(per_volume, 4)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/msd_hippocampus")
    p.add_argument("--archs", nargs="+", default=["unet", "transunet"])
    p.add_argument("--encoder", default="unet_tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out")
    a = p.parse_args()
    device = engine.resolve_device(a.device)
    loaded = scans.load_cases(scans.find_cases(a.data)[:40])
    rows = [bench(arch, a.encoder, loaded, a.batch_size, a.steps, device) for arch in a.archs]
    for r in rows:
        print(json.dumps(r))
    if a.out:
        write_json(a.out, {"machine": engine.machine_info(), "threads": torch.get_num_threads(),
                           "batch_size": a.batch_size, "device": str(device), "rows": rows, **engine.git_info()})


if __name__ == "__main__":
    main()
