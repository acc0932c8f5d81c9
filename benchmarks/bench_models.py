"""Training throughput (forward + backward, images/s) of U-Net and TransUNet on this machine.

    .venv/bin/python benchmarks/bench_models.py [--encoders unet_tiny resnet18] [--out results/bench/models.json]

Defaults: encoder unet_tiny, 48x64 inputs, batch 32, 1 channel, 3 classes, torch's default
number of threads, 3 warm-up iterations then 10 timed ones (median iteration time reported).
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import engine
import models
from atomicio import write_json


def get_args_parser():
    p = argparse.ArgumentParser(description="forward+backward images/s of the segmenters")
    p.add_argument("--archs", nargs="+", default=["unet", "transunet"])
    p.add_argument("--encoders", nargs="+", default=["unet_tiny"])
    p.add_argument("--size", type=int, nargs=2, default=[48, 64], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    return p


def bench(arch, encoder, a):
    torch.manual_seed(0)
    model = models.create_segmenter(arch, encoder, num_classes=a.classes).train()
    x = torch.randn(a.batch, 1, *a.size)
    y = torch.randint(0, a.classes, (a.batch, *a.size))
    if a.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    times = []
    for i in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return dict(arch=arch, encoder=encoder, params_m=round(models.count_parameters(model) / 1e6, 3),
                step_s=round(step, 4), images_per_s=round(a.batch / step, 1))


def main():
    a = get_args_parser().parse_args()
    load_before = os.getloadavg()[0]
    rows = [bench(arch, enc, a) for enc in a.encoders for arch in a.archs]
    load = dict(before=round(load_before, 2), after=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
    print(f"forward+backward, batch {a.batch}, {a.size[0]}x{a.size[1]}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; 1-min load average {load['before']} -> {load['after']} "
          f"on {load['cpus']} CPUs (figures are only meaningful on an idle machine)")
    print(f"{'arch':<10}{'encoder':<12}{'params':>9}{'step s':>9}{'images/s':>10}")
    for r in rows:
        print(f"{r['arch']:<10}{r['encoder']:<12}{r['params_m']:>8.2f}M{r['step_s']:>9.3f}{r['images_per_s']:>10.1f}")
    if a.out:
        write_json(a.out, dict(vars(a), threads=torch.get_num_threads(), load_average=load, machine=engine.machine_info(),
                               rows=rows, **engine.git_info()))


if __name__ == "__main__":
    main()
