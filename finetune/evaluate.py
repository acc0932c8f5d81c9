"""Per-volume 3D scores of a segmenter on labelled cases: each case predicted as ``Inference`` says,
then Dice and HD95 per foreground class (``finetune.metrics``)."""
from __future__ import annotations

import scans
from tqdm import tqdm

from .inference import Inference
from .metrics import case_metrics, summarize


def evaluate_cases(model, loaded: list[scans.LoadedCase], num_classes: int, inference: Inference, device="cpu", *,
                   on_prediction=None, report_every: int = 0, progress: bool = False) -> tuple[list[dict], dict]:
    """Per-case Dice/HD95 (``metrics.case_metrics`` plus ``case_id``) and their ``metrics.summarize``.

    Puts the model in eval mode and restores its previous mode; metrics on each scan's own grid.
    ``on_prediction(index, labels)``, if given, receives each case's predicted labels (X, Y, Z) (e.g. to
    save them). ``progress``: a tqdm bar (on a terminal); ``report_every`` N > 0: a printed line every N
    cases (off one).
    """
    was_training = model.training
    model.eval()
    per_case = []
    try:
        for i, c in enumerate(tqdm(loaded, desc="evaluating", unit="case", disable=not progress, leave=False)):
            pred = inference.probabilities(model, c.image, c.spacing, device).argmax(0)
            if on_prediction is not None:
                on_prediction(i, pred)
            per_case.append({"case_id": c.case_id, **case_metrics(pred, c.label, num_classes, c.spacing)})
            if report_every and ((i + 1) % report_every == 0 or i + 1 == len(loaded)):
                print(f"evaluating: {i + 1}/{len(loaded)} cases", flush=True)
    finally:
        model.train(was_training)
    return per_case, summarize(per_case)
