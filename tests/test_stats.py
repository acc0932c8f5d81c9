"""The hierarchical bootstrap against a slow, obviously-correct reference, and its basic properties."""
import numpy as np
import pytest

from experiments.stats import hierarchical_bootstrap, subject_sums


def slow_bootstrap(sums, counts, n_boot, rng):
    """Loop by loop: label seeds, then training seeds within each, then subjects (shared)."""
    label_seeds = sorted({l for l, _ in sums})
    stats = []
    for _ in range(n_boot):
        subj = rng.integers(0, len(counts), len(counts))
        values = []
        for l in rng.choice(label_seeds, len(label_seeds)):
            train = [s for ll, s in sums if ll == l]
            for s in rng.choice(train, len(train)):
                values.append(sums[(l, s)][subj].sum() / counts[subj].sum())
        stats.append(np.mean(values))
    return np.quantile(stats, [0.025, 0.975])


def data(n_label=3, n_train=2, n_subj=30, seed=1):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 3, n_subj).astype(float)
    sums = {(l, s): counts * (0.1 + rng.normal(0, 0.05)) + rng.normal(0, 0.1, n_subj) * np.sqrt(counts)
            for l in range(n_label) for s in range(n_train)}
    return sums, counts


@pytest.mark.parametrize("shape", [(3, 2), (5, 1), (1, 4)])
def test_matches_the_slow_reference(shape):
    sums, counts = data(*shape)
    est, low, high = hierarchical_bootstrap(sums, counts, n_boot=4000, seed=0)
    ref = slow_bootstrap(sums, counts, 4000, np.random.default_rng(123))
    assert est == pytest.approx(np.mean([s.sum() / counts.sum() for s in sums.values()]))
    assert low == pytest.approx(ref[0], abs=0.01) and high == pytest.approx(ref[1], abs=0.01)


def test_unbalanced_replicates_and_degenerate_cases():
    sums, counts = data(3, 2)
    del sums[(2, 1)]  # label seed 2 has one training seed
    est, low, high = hierarchical_bootstrap(sums, counts, n_boot=2000)
    assert low < est < high
    const = {(l, s): 0.3 * np.ones(10) for l in range(2) for s in range(2)}
    assert hierarchical_bootstrap(const, np.ones(10)) == pytest.approx((0.3, 0.3, 0.3))


def test_interval_covers_the_true_effect_in_simulations():
    """10 label seeds x 2 training seeds, true mean effect 0.1: the 95% interval covers it in most of 60 data sets."""
    covered = sum(low <= 0.1 <= high for low, high in
                  (hierarchical_bootstrap(*data(10, 2, seed=k), n_boot=1000)[1:] for k in range(60)))
    assert covered >= 51  # nominal 57 of 60; with few clusters the bootstrap is a little narrow


def test_subject_sums_weight_cases():
    cases = [{"case_id": "a", "mean_dice": 0.5}, {"case_id": "b", "mean_dice": 0.7}, {"case_id": "c", "mean_dice": 0.1}]
    sums, counts = subject_sums(cases, {"a": "s1", "b": "s1"}, ["c", "s1"])
    assert sums.tolist() == pytest.approx([0.1, 1.2]) and counts.tolist() == [1, 2]


# ------------------------------------------------------------------ the table's cells from run records

def _run(init, label_seed, seed, dice, cases=("a", "b", "c", "d")):
    return {"kind": "finetune", "arch": "unet", "init": init, "fraction": 0.01, "label_seed": label_seed, "seed": seed,
            "out": f"runs/{init}/L{label_seed}_S{seed}", "mean_dice": dice, "collapsed": False,
            "cases": [{"case_id": c, "mean_dice": dice + 0.01 * i} for i, c in enumerate(cases)]}


CFG = {"archs": ["unet"], "fractions": [0.01], "inits": ["random", "rotation"], "pretrain": {"budgets": [1]}}
SUBJECTS = {"a": "s1", "b": "s1", "c": "s2", "d": "s3"}


def test_cells_pair_by_replicate_and_say_how_many_pairs():
    from experiments.render import findings
    from experiments.stats import cell_stats
    rows = [_run("random", l, s, 0.70 + 0.01 * l) for l in range(3) for s in range(2)]
    rows += [_run("rotation", l, s, 0.75 + 0.01 * l) for l in range(2) for s in range(2)]
    st = cell_stats(CFG, rows, SUBJECTS, n_boot=200)[("unet", "rotation", 1, 0.01)]
    assert st["n"] == 4 and st["paired"] == 4 and st["paired_label_seeds"] == 2
    assert st["delta"] == pytest.approx(0.05) and st["low"] is not None
    text = "\n".join(findings(CFG, cell_stats(CFG, rows, SUBJECTS, n_boot=200)))
    assert "4 paired replicates over 2 label seeds †" in text and "likely too narrow" in text


def test_one_replicate_gets_no_ci_and_is_not_called_shown():
    from experiments.render import findings, table_csv
    from experiments.stats import cell_stats
    rows = [_run("random", 0, 0, 0.70), _run("rotation", 0, 0, 0.80)]
    stats = cell_stats(CFG, rows, SUBJECTS, n_boot=200)
    st = stats[("unet", "rotation", 1, 0.01)]
    assert st["delta"] == pytest.approx(0.10) and st["low"] is None and st["mean_low"] is None
    text = "\n".join(findings(CFG, stats))
    assert "1 paired replicate, so no CI" in text and "No init differs" in text
    assert table_csv(CFG, stats).splitlines()[2] == "unet,rotation,0.01,1,0.8000,,0.1000,,,0,1,"


def test_a_missing_random_run_is_said_not_read_as_no_difference():
    from experiments.render import findings
    from experiments.stats import cell_stats
    rows = [_run("rotation", 0, 0, 0.80), _run("rotation", 1, 0, 0.82)]
    text = "\n".join(findings(CFG, cell_stats(CFG, rows, SUBJECTS, n_boot=200)))
    assert "rotation init with unet at 1% labels: no random-init run of the same replicates to compare with" in text


def test_runs_scored_on_other_test_cases_are_refused():
    from experiments.stats import cell_stats
    rows = [_run("random", 0, 0, 0.70), _run("rotation", 0, 0, 0.80, cases=("a", "b", "c"))]
    with pytest.raises(ValueError, match=r"runs/random/L0_S0 was scored on 4 test cases and runs/rotation/L0_S0 on 3 "
                                         r"\(1 differ\): runs on other test cases cannot be compared"):
        cell_stats(CFG, rows, SUBJECTS, n_boot=200)


def slow_nested_bootstrap(sums, counts, n_boot, rng):
    """Three levels, loop by loop: pretraining seeds, label seeds within each, training seeds within those."""
    stats = []
    for _ in range(n_boot):
        subj = rng.integers(0, len(counts), len(counts))
        values = []
        for p in rng.choice(sorted({k[0] for k in sums}), len({k[0] for k in sums})):
            labels = sorted({k[1] for k in sums if k[0] == p})
            for l in rng.choice(labels, len(labels)):
                train = sorted({k[2] for k in sums if k[:2] == (p, l)})
                for s in rng.choice(train, len(train)):
                    values.append(sums[(p, l, s)][subj].sum() / counts[subj].sum())
        stats.append(np.mean(values))
    return np.quantile(stats, [0.025, 0.975])


def test_pretraining_seeds_are_the_top_level_and_match_the_slow_reference():
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 3, 25).astype(float)
    sums = {}
    for p in range(3):
        run_effect = rng.normal(0, 0.05)  # one pretraining run is one draw: it moves all its replicates
        for l in range(p, 10, 3):
            for s in range(2):
                sums[(p, l, s)] = counts * (0.1 + run_effect + rng.normal(0, 0.02)) + rng.normal(0, 0.05, 25) * np.sqrt(counts)
    est, low, high = hierarchical_bootstrap(sums, counts, n_boot=4000)
    ref = slow_nested_bootstrap(sums, counts, 4000, np.random.default_rng(9))
    assert low == pytest.approx(ref[0], abs=0.01) and high == pytest.approx(ref[1], abs=0.01)
    flat = {k[1:]: v for k, v in sums.items()}  # the same replicates without the pretraining level
    _, flat_low, flat_high = hierarchical_bootstrap(flat, counts, n_boot=4000)
    assert high - low > 1.3 * (flat_high - flat_low)  # three draws of the run effect: a wider, honest interval


def _ft(init, label_seed, dice, p=None, budget=1):
    return {"kind": "finetune", "arch": "unet", "init": init, "fraction": 0.01, "label_seed": label_seed, "seed": 0,
            "pretrain_seed": p, "budget": budget, "out": f"runs/{init}@{budget}/L{label_seed}", "mean_dice": dice,
            "collapsed": False, "cases": [{"case_id": c, "mean_dice": dice + 0.01 * i} for i, c in enumerate("abcd")]}


def test_cells_rest_on_pretraining_runs_and_budgets_compare_in_pairs():
    from experiments.render import budget_csv, budget_rows, findings
    from experiments.stats import budget_growth, cell_stats
    cfg = {"archs": ["unet"], "fractions": [0.01], "inits": ["random", "restore"], "tasks": ["restore"],
           "pretrain": {"budgets": [1, 4]}}
    rows = [_ft("random", l, 0.70) for l in range(6)]
    rows += [_ft("restore", l, 0.72 + 0.01 * (l % 3), p=l % 3) for l in range(6)]
    rows += [_ft("restore", l, 0.75 + 0.01 * (l % 3), p=l % 3, budget=4) for l in range(6)]
    rows += [{"kind": "pretrain", "task": "restore", "budget": b, "steps": 100 * b} for b in (1, 4)]
    subjects = {c: c for c in "abcd"}
    stats = cell_stats(cfg, rows, subjects, n_boot=500)
    one, four = stats[("unet", "restore", 1, 0.01)], stats[("unet", "restore", 4, 0.01)]
    assert one["pretrain_seeds"] == 3 and one["paired"] == 6 and one["delta"] == pytest.approx(0.03)
    assert four["delta"] == pytest.approx(0.06) and stats[("unet", "random", 1, 0.01)]["pretrain_seeds"] == 0
    assert "6 paired replicates over 6 label seeds and 3 pretraining runs" in "\n".join(findings(cfg, stats))
    growth = budget_growth(rows, subjects, "unet", "restore", 0.01, 1, 4, n_boot=500)
    assert growth["delta"] == pytest.approx(0.03) and growth["low"] == pytest.approx(0.03) and growth["n"] == 6
    table = budget_csv(budget_rows(cfg, stats, rows, {("unet", "restore", 0.01): growth})).splitlines()
    assert table[0].startswith("task,pretrain_steps,budget,arch,fraction,n,n_paired,pretrain_seeds,mean_dice,delta_vs_random")
    assert [r.split(",")[:3] for r in table[1:]] == [["random", "0", "1"], ["restore", "100", "1"], ["restore", "400", "4"]]


def test_each_pretraining_run_is_credited_with_its_own_replicates_only():
    from experiments.render import random_dice, run_transfer

    def ft(init, label_seed, dice, pretrain_seed=None, arch="unet", budget=1):
        return {"kind": "finetune", "arch": arch, "init": init, "fraction": 0.01, "label_seed": label_seed, "seed": 0,
                "budget": budget, "pretrain_seed": pretrain_seed, "mean_dice": dice}
    rows = [ft("random", 0, 0.70), ft("random", 1, 0.80), ft("random", 2, 0.60),
            ft("restore", 0, 0.75, 0), ft("restore", 2, 0.70, 0), ft("restore", 1, 0.50, 1),
            ft("restore", 0, 0.99, 0, budget=4), ft("restore", 0, 0.99, 0, arch="transunet")]
    base = random_dice(rows, "unet", 0.01)
    assert base == {(0, 0): 0.70, (1, 0): 0.80, (2, 0): 0.60}
    assert run_transfer(rows, {"task": "restore", "seed": 0, "budget": 1}, "unet", 0.01, base) == "+0.075 (n 2)"
    assert run_transfer(rows, {"task": "restore", "seed": 1, "budget": 1}, "unet", 0.01, base) == "-0.300 (n 1)"
    assert run_transfer(rows, {"task": "restore", "seed": 2, "budget": 1}, "unet", 0.01, base) == ""
