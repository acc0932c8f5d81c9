"""SimCLR step throughput: real data pipeline vs ready-made tensors vs lightly's reference recipe.

    .venv/bin/python benchmarks/bench_simclr.py [--encoder unet_tiny] [--batch-size 32] \
        [--size 48] [--steps 30] [--device cpu] [--out results/bench/simclr_cpu.json]

Three measurements, same encoder, batch size and view size, one after the other in one run:
  pipeline  this project's SimCLR data path: slices through a DataLoader, both views made
            on the device (pretrain.tasks.simclr.make_views), then the step;
  tensors   the same step on view tensors made beforehand (the ceiling for the pipeline);
  lightly   lightly's own recipe: SimCLRTransform on 8-bit PIL slices (RGB, ImageNet
            normalisation, as lightly does it) + SimCLRProjectionHead + NTXentLoss, with the
            same encoder built for 3 input channels.
images/s counts slices (each gives two views). The pipeline must reach >= 0.9 of tensors.
"""
import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import engine  # noqa: E402
import models  # noqa: E402
import scans  # noqa: E402
from atomicio import write_json  # noqa: E402
from pretrain.tasks.simclr import SimCLRModel, SimCLRSample, ViewConfig  # noqa: E402
from pretrain.views import content  # noqa: E402


def timed_steps(step, batches, steps, warmup, device):
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def cycle(loader):
    while True:
        yield from loader


class LightlySlices(Dataset):
    """Slices as 8-bit RGB PIL images through lightly's SimCLRTransform (its reference recipe)."""

    def __init__(self, stack, transform):
        self.stack, self.transform = stack, transform

    def __len__(self):
        return len(self.stack)

    def __getitem__(self, i):
        region = content(self.stack.images[i], self.stack.boxes[i])
        img = Image.fromarray((np.clip(region, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        return tuple(self.transform(img))


def make_step(model, opt, device, amp):
    """The training step of the engine's loop (engine.autocast + engine.optimizer_step)."""
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)

    def step(batch, ready=False):
        batch = engine.to_device(batch, device, cuda)
        with engine.autocast(device, amp):
            loss = (model.loss_on_views(*batch) if ready else model(batch))["loss"]
        engine.optimizer_step(loss, opt, scaler)
    return step


class LightlyModel(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        c = encoder.channels[-1]
        self.head = SimCLRProjectionHead(c, max(c, 128), 128)
        self.criterion = NTXentLoss(temperature=0.2)

    def forward(self, batch):
        z = self.head(models.pooled_features(self.encoder, torch.cat(batch)))
        return {"loss": self.criterion(*z.chunk(2))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/msd_hippocampus")
    p.add_argument("--encoder", default="unet_tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=48, help="square view side (lightly's transform takes one size)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    device = engine.resolve_device(a.device)
    workers = engine.default_workers(a.workers)
    engine.seed_everything(0)
    stack_cases = scans.load_cases(scans.find_cases(a.data), with_label=False)
    views = ViewConfig(size=(a.size, a.size))
    ds = scans.UnlabelledSlices(stack_cases, transform=SimCLRSample(views.size))
    n_batches = a.steps + a.warmup
    keys = engine.ResumableSampler(len(ds), a.batch_size).set_range(0, n_batches)  # (epoch, index) keys
    kw = dict(batch_size=a.batch_size, sampler=keys, drop_last=True, num_workers=workers,
              pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def fresh_model(in_chans=1, cls=SimCLRModel):
        torch.manual_seed(0)
        enc = models.create_encoder(a.encoder, in_chans=in_chans)
        m = (cls(enc, views=views) if cls is SimCLRModel else cls(enc)).to(device).train()
        if device.type == "cuda":
            m.to(memory_format=torch.channels_last)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-3)

    res = {}
    loader = DataLoader(ds, **kw)
    model, opt = fresh_model()
    res["pipeline"] = timed_steps(make_step(model, opt, device, a.amp), cycle(loader), a.steps, a.warmup, device)
    batches = zip(cycle(DataLoader(ds, **{**kw, "num_workers": 0, "persistent_workers": False})), range(n_batches))
    ready = [model.two_views(engine.to_device(b, device, False)) for b, _ in batches]
    model, opt = fresh_model()
    step = make_step(model, opt, device, a.amp)
    res["tensors"] = timed_steps(lambda views: step(views, ready=True), iter(ready), a.steps, a.warmup, device)
    lds = LightlySlices(ds.stack, SimCLRTransform(input_size=a.size, min_scale=0.3))
    model, opt = fresh_model(in_chans=3, cls=LightlyModel)
    lkw = {**kw, "sampler": None, "shuffle": True}  # lightly's dataset takes plain indices
    res["lightly"] = timed_steps(make_step(model, opt, device, a.amp), cycle(DataLoader(lds, **lkw)), a.steps, a.warmup,
                                 device)
    rates = {k: a.batch_size * a.steps / v for k, v in res.items()}
    print(f"SimCLR step, {a.encoder}, batch {a.batch_size}, views {a.size}x{a.size}, device {device}, workers {workers}, amp {a.amp}")
    for k in ("pipeline", "tensors", "lightly"):
        print(f"  {k:<9} {rates[k]:8.1f} slices/s  ({rates[k] / rates['tensors']:.2f} of tensors)")
    if a.out:
        write_json(a.out, {"rates_slices_per_s": rates, "ratio_pipeline_vs_tensors": rates["pipeline"] / rates["tensors"],
                                 "ratio_lightly_vs_tensors": rates["lightly"] / rates["tensors"], "args": vars(a),
                                 "workers": workers, "machine": engine.machine_info(), **engine.git_info()})


if __name__ == "__main__":
    main()
