#!/usr/bin/env bash
# GPU smoke test of the paper-size path (experiments/configs/paper.yaml), one line per check.
#
#   bash benchmarks/gpu_smoke.sh [WORK_DIR]        # PY=.venv/bin/python by default
#
# On one GPU, in under 5 minutes: pretrains each pretext task with AMP at paper sizes (ResNet-50,
# 256 slices a step, paper.yaml's task options) for a few steps and checks that a run stopped
# half-way and resumed ends with the same encoder as an uninterrupted one (deterministic
# algorithms on, as exactness on a GPU needs); fine-tunes a U-Net and an R50-ViT-B/16 TransUNet with
# AMP and TTA, predicts a test case (predict must repeat what the evaluation scored) and exports
# ONNX. Prints the GPU, then "ok <check>: ..." or "FAIL <check>: ..." per check; exit 1 when a check
# fails. On a machine without a CUDA GPU it exits 2 in one line and runs nothing.
set -u
PY="${PY:-.venv/bin/python}"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONHASHSEED=0 CUBLAS_WORKSPACE_CONFIG=:4096:8
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_smoke: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was run"
  exit 2
fi
W="${1:-$(mktemp -d)}"
mkdir -p "$W"
D=data/msd_hippocampus
failed=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failed=1; }
# the trainers with deterministic algorithms (cuDNN/cuBLAS) switched on, for bit-exact comparisons
det() { "$PY" -c "import runpy, sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); \
sys.argv = ['$1', *sys.argv[1:]]; runpy.run_module('$1', run_name='__main__')" "${@:2}"; }
same() {  # max |difference| of the tensors of two encoder.pt files
  "$PY" -c "import sys, torch
a, b = (torch.load(f, weights_only=True)['state_dict'] for f in sys.argv[1:3])
print(f'{max((a[k].float() - b[k].float()).abs().max().item() for k in a):.3g}')" "$1" "$2"
}
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0)
print(f'gpu_smoke: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')"
"$PY" -m scans split $D --out "$W/split.json" > /dev/null || { bad "scans split"; exit 1; }

# 1. Pretraining at paper sizes with AMP; exact resume.
P="--data $D --split $W/split.json --encoder resnet50 --batch-size 256 --steps 6 --amp --device cuda --workers 8 --max-cases 60"
declare -A TASK_ARGS=([rotation]="--crop 64" [jigsaw]="--tile 64" [simclr]="--view-size 64 96 --temperature 0.1")
for task in rotation jigsaw simclr; do
  t0=$(date +%s)
  det pretrain --task $task $P ${TASK_ARGS[$task]} --out "$W/pre-$task" > "$W/pre-$task.log" 2>&1 \
    || { bad "pretrain $task (AMP, ResNet-50): $(tail -1 "$W/pre-$task.log")"; continue; }
  rate=$("$PY" -c "import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]; print(f\"{r[-1]['images_per_s']:.0f}\")" \
    "$W/pre-$task/log.jsonl")
  ok "pretrain $task (AMP, ResNet-50, batch 256): 6 steps in $(( $(date +%s) - t0 )) s with start-up, $rate images/s at the end"
  det pretrain --task $task $P ${TASK_ARGS[$task]} --stop-at-step 3 --out "$W/res-$task" > "$W/res-$task.log" 2>&1
  det pretrain --task $task $P ${TASK_ARGS[$task]} --out "$W/res-$task" >> "$W/res-$task.log" 2>&1 \
    || { bad "resume $task: $(tail -1 "$W/res-$task.log")"; continue; }
  d=$(same "$W/pre-$task/encoder.pt" "$W/res-$task/encoder.pt")
  [ "$d" = "0" ] && ok "resume $task: stopped at step 3, resumed to 6: the same encoder (max |dw| 0)" \
    || bad "resume $task: stopped at 3 and resumed differs from the uninterrupted run by max |dw| $d"
done

# 2. Fine-tuning both architectures with AMP and TTA (paper.yaml's options), predict = evaluation, ONNX.
F="--encoder resnet50 --init random --fraction 0.1 --data $D --split $W/split.json --steps 30 --batch-size 64 --amp --tta \
   --device cuda --workers 8 --max-test-cases 4"
for arch in unet transunet; do
  "$PY" -m finetune --arch $arch $F --out "$W/ft-$arch" > "$W/ft-$arch.log" 2>&1 \
    || { bad "finetune $arch (AMP, TTA): $(tail -1 "$W/ft-$arch.log")"; continue; }
  ok "finetune $arch (AMP, TTA): $(grep '^done:' "$W/ft-$arch.log" | cut -c7- | cut -d';' -f1)"
  case=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['cases'][0]['case_id'])" "$W/ft-$arch/metrics.json")
  "$PY" -m finetune.predict --run "$W/ft-$arch" --input $D/imagesTr/$case.nii.gz --out "$W/pred-$arch" > "$W/pred-$arch.log" 2>&1 \
    || { bad "predict $arch: $(tail -1 "$W/pred-$arch.log")"; continue; }
  "$PY" - "$W/ft-$arch/metrics.json" "$case" "$W/pred-$arch/$case.nii.gz" $D/labelsTr/$case.nii.gz <<'PY' && ok "predict $arch: repeats the evaluation's Dice for $case (model.pt's TTA and AMP)" || failed=1
import json, sys
import nibabel as nib, numpy as np
metrics, case, pred, lab = sys.argv[1:]
ref = next(c for c in json.load(open(metrics))["cases"] if c["case_id"] == case)
p, l = (np.asarray(nib.load(f).dataobj).astype(int) for f in (pred, lab))
for k, d in ref["dice"].items():
    g, q = l == int(k), p == int(k)
    mine = 1.0 if g.sum() + q.sum() == 0 else 2 * (g & q).sum() / (g.sum() + q.sum())
    if abs(mine - d) > 1e-6:
        print(f"FAIL predict: class {k} Dice {mine:.6f}, the evaluation {d:.6f}"); sys.exit(1)
PY
  "$PY" -m finetune.export --run "$W/ft-$arch" --out "$W/$arch.onnx" > "$W/export-$arch.log" 2>&1 \
    && ok "export $arch: $(tail -1 "$W/export-$arch.log" | sed 's/.*onnxruntime/onnxruntime/')" \
    || bad "export $arch: $(tail -1 "$W/export-$arch.log")"
done
echo "gpu_smoke: $([ $failed -eq 0 ] && echo 'every check passed' || echo 'some checks FAILED') (runs in $W)"
exit $failed
