"""Readers, discovery, normalisation, splits, datasets and the scans CLI."""
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import scans
from atomicio import write_json
from helpers import write_dicom_series
from scans.__main__ import main as scans_main
from scans.augment import segmentation_augment


def write_nifti(path, arr, spacing=(1.0, 1.0, 1.0)):
    affine = np.diag(list(spacing) + [1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(path))




def test_nifti_keeps_spacing_affine_and_dtype(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    write_nifti(tmp_path / "a.nii.gz", arr, spacing=(0.8, 0.9, 2.5))
    v = scans.read_volume(tmp_path / "a.nii.gz")
    assert v.array.shape == (4, 5, 6) and np.array_equal(v.array, arr)
    assert v.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert v.affine[2, 2] == pytest.approx(2.5) and v.dtype == "int16"
    write_nifti(tmp_path / "b.nii", arr.astype(np.float32))
    assert scans.read_volume(tmp_path / "b.nii").array.dtype == np.float32


def test_dicom_series_sorted_by_position_with_rescale(tmp_path):
    vol = np.random.default_rng(1).integers(0, 4000, size=(8, 10, 5)).astype(np.uint16)
    write_dicom_series(tmp_path / "series", vol)
    v = scans.read_volume(tmp_path / "series")
    assert v.array.shape == (8, 10, 5)
    np.testing.assert_allclose(v.array, vol * 2.0 - 100.0)
    assert v.spacing == pytest.approx((0.5, 0.7, 3.0))
    # voxel (row 2, column 3, slice 4): LPS (3 * 0.7, 2 * 0.5, 4 * 3) -> RAS (-2.1, -1.0, 12)
    np.testing.assert_allclose(v.affine @ [2, 3, 4, 1], [-2.1, -1.0, 12.0, 1.0])
    w = scans.read_dicom_series(tmp_path / "series", window=(1000.0, 400.0))
    assert w.array.min() >= 800 and w.array.max() <= 1200


def test_write_segmentation_keeps_the_source_geometry(tmp_path):
    src = tmp_path / "case_0000.nii.gz"
    arr = np.zeros((6, 7, 5, 1), np.int16)  # a 4D file with one volume
    aff = np.array([[0, -0.8, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(arr, aff), str(src))
    vol = scans.read_volume(src)
    labels = np.random.default_rng(0).integers(0, 3, vol.array.shape)
    out = scans.write_segmentation(vol, labels, tmp_path / "out", probabilities=np.ones((3, *vol.array.shape)) / 3)
    assert out.name == "case.nii.gz" and sorted(p.name for p in out.parent.iterdir()) == ["case.nii.gz", "case_probabilities.nii.gz"]
    back = nib.load(out)
    assert back.shape == arr.shape and np.allclose(back.affine, aff) and back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj)[..., 0], labels)
    with pytest.raises(ValueError, match="shape"):
        scans.write_segmentation(vol, labels[:-1], tmp_path / "out")


def test_dicom_mixed_series_is_an_error(tmp_path):
    vol = np.zeros((4, 4, 2), dtype=np.uint16)
    write_dicom_series(tmp_path / "mixed", vol)
    other = tmp_path / "other"
    write_dicom_series(other, vol)
    shutil.copy(other / "slice000.dcm", tmp_path / "mixed" / "extra.dcm")
    with pytest.raises(scans.ScanError, match="mixes 2 DICOM series") as e:
        scans.read_volume(tmp_path / "mixed")
    assert "mixed" in str(e.value)


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_tiff_8_and_16_bit(tmp_path, ext, dtype):
    arr = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, size=(12, 9)).astype(dtype)
    path = tmp_path / f"img{ext}"
    if ext == ".png":
        Image.fromarray(arr).save(path)
    else:
        import tifffile
        tifffile.imwrite(path, arr)
    v = scans.read_volume(path)
    assert v.array.shape == (12, 9, 1) and v.array.dtype == dtype
    assert np.array_equal(v.array[..., 0], arr)


def test_multipage_tiff_and_npy(tmp_path):
    import tifffile
    stack = np.random.default_rng(0).integers(0, 60000, size=(3, 7, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tiff", stack)
    v = scans.read_volume(tmp_path / "stack.tiff")
    assert v.array.shape == (7, 5, 3) and np.array_equal(v.array[..., 1], stack[1])
    np.save(tmp_path / "v.npy", stack.astype(np.float32))
    assert scans.read_volume(tmp_path / "v.npy").array.shape == (3, 7, 5)


def test_truncated_nifti_names_the_file(tmp_path, data_dir):
    src = data_dir / "imagesTr" / "hippocampus_001.nii.gz"
    (tmp_path / "t.nii.gz").write_bytes(src.read_bytes()[:3000])
    with pytest.raises(scans.ScanError, match="t.nii.gz: cannot read NIfTI"):
        scans.read_volume(tmp_path / "t.nii.gz")


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"x")
    with pytest.raises(scans.ScanError, match="unknown extension '.xyz'"):
        scans.read_volume(tmp_path / "scan.xyz")
    with pytest.raises(scans.ScanError, match="no such file"):
        scans.read_volume(tmp_path / "nope.nii.gz")


# ---------------------------------------------------------------- discovery

def test_msd_discovery_with_dataset_json(data_dir):
    cases = scans.find_cases(data_dir)
    assert len(cases) == 260 and all(c.label for c in cases)
    assert cases[0].case_id == "hippocampus_001"


def test_msd_pairing_without_json_and_channel_suffix(tmp_path):
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    write_nifti(tmp_path / "imagesTr" / "case_a_0000.nii.gz", np.zeros((3, 3, 3), np.float32))
    write_nifti(tmp_path / "labelsTr" / "case_a.nii.gz", np.zeros((3, 3, 3), np.uint8))
    write_nifti(tmp_path / "imagesTr" / "case_b_0000.nii.gz", np.zeros((3, 3, 3), np.float32))
    cases = scans.find_cases(tmp_path)
    assert [(c.case_id, c.label is not None) for c in cases] == [("case_a", True), ("case_b", False)]


def test_plain_folder_recursive(tmp_path):
    write_nifti(tmp_path / "p1" / "t1.nii.gz", np.zeros((3, 3, 3), np.float32)) if (tmp_path / "p1").mkdir() is None else None
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "slice.png")
    write_dicom_series(tmp_path / "p2" / "ct", np.zeros((4, 4, 2), np.uint16))
    (tmp_path / "notes.txt").write_text("ignored")
    ids = [c.case_id for c in scans.find_cases(tmp_path)]
    assert ids == ["p1_t1", "p2_ct", "slice"]


@pytest.mark.parametrize("kind", ["missing", "empty", "unknown"])
def test_bad_folders(tmp_path, kind):
    target = tmp_path / "d"
    if kind != "missing":
        target.mkdir()
    if kind == "unknown":
        (target / "scan.xyz").write_bytes(b"x")
    with pytest.raises(scans.ScanError) as e:
        scans.find_cases(target)
    assert str(target) in str(e.value)


# ---------------------------------------------------------------- loading and checks

def _case(tmp_path, image, label):
    write_nifti(tmp_path / "img.nii.gz", image)
    write_nifti(tmp_path / "lab.nii.gz", label)
    return scans.Case("c", str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"))


def test_shape_mismatch_is_an_error(tmp_path):
    case = _case(tmp_path, np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(scans.ScanError, match=r"lab.nii.gz: label shape \(4, 4, 3\) does not match"):
        scans.load_case(case, cache=False)


def test_non_integer_labels_are_an_error(tmp_path):
    case = _case(tmp_path, np.zeros((4, 4, 4), np.float32), np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(scans.ScanError, match="lab.nii.gz: label values are not integers"):
        scans.load_case(case, cache=False)


def test_float_labels_holding_integers_are_cast(tmp_path):
    lab = np.zeros((4, 4, 4), np.float32)
    lab[1, 1, 1] = 2
    loaded = scans.load_case(_case(tmp_path, np.random.rand(4, 4, 4).astype(np.float32), lab), cache=False)
    assert loaded.label.dtype == np.int64 and loaded.label[1, 1, 1] == 2


def test_normalisation_modes():
    x = np.random.default_rng(0).normal(1000, 300, size=(10, 10, 10))
    mm = scans.normalize(x, scans.Normalization("minmax"))
    assert mm.dtype == np.float32 and mm.min() == 0 and mm.max() == pytest.approx(1)
    z = scans.normalize(x, scans.Normalization("zscore", clip=None))
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1, abs=1e-4)
    ct = scans.normalize(np.array([-2000.0, 40.0, 3000.0]), scans.Normalization("none", clip=None, window=(40, 400)))
    assert ct.tolist() == [-160.0, 40.0, 240.0]
    with pytest.raises(ValueError, match="mode"):
        scans.Normalization("robust")


def test_pad_or_crop_and_slicing():
    img = np.ones((35, 70), np.float32)
    out = scans.pad_or_crop(img, (48, 64))
    assert out.shape == (48, 64) and out[:6].sum() == 0 and out[6:41].all()
    assert len(scans.slice_volume(np.zeros((3, 4, 5)), axis=1)) == 4


def test_cache_avoids_second_decode(small_msd, monkeypatch):
    scans.clear_cache()
    cases = scans.find_cases(small_msd)[:2]
    first = scans.load_cases(cases)
    import scans.volumes as volumes
    monkeypatch.setattr(volumes, "read_volume", lambda *a, **k: pytest.fail("decoded twice"))
    again = scans.load_cases(cases)
    assert all(a is b for a, b in zip(first, again))


# ---------------------------------------------------------------- splits

def test_splits_nested_disjoint_deterministic():
    ids = [f"case_{i:03d}" for i in range(260)]
    a = scans.make_splits(ids, 0.2, 0, (0.01, 0.1, 1.0), (0, 1, 2))
    assert a == scans.make_splits(ids, 0.2, 0, (1.0, 0.1, 0.01), (0, 1, 2))
    test = set(a["test"])
    assert len(test) == 52 and not test & set(a["train_pool"])
    for s in ("0", "1", "2"):
        f = {k: set(v) for k, v in a["label_fractions"][s].items()}
        assert f["0.01"] <= f["0.1"] <= f["1.0"] == set(a["train_pool"])
        assert len(f["0.01"]) == 2 and len(f["0.1"]) == 21
    assert a["label_fractions"]["0"]["0.1"] != a["label_fractions"]["1"]["0.1"]
    assert scans.make_splits(ids, 0.2, 1)["test"] != a["test"]


def test_tiny_fraction_keeps_one_case_and_bad_fraction_fails():
    s = scans.make_splits([f"c{i}" for i in range(10)], 0.2, 0, (0.01, 1.0), (0,))
    assert len(s["label_fractions"]["0"]["0.01"]) == 1
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="label fraction must be in"):
            scans.make_splits(["a", "b", "c"], 0.3, 0, (bad,), (0,))


def test_select_cases_errors(tmp_path):
    path = tmp_path / "s.json"
    write_json(path, scans.make_splits([f"c{i}" for i in range(10)], 0.2, 0, (0.5, 1.0), (0,)))
    s = scans.load_splits(path)
    assert len(scans.select_cases(s, 0.5, 0)) == 4
    with pytest.raises(scans.ScanError, match="no label fraction 0.1"):
        scans.select_cases(s, 0.1, 0)
    with pytest.raises(scans.ScanError, match="no label fractions for seed 3"):
        scans.select_cases(s, 0.5, 3)


# ---------------------------------------------------------------- datasets

def test_datasets_types_and_shapes(small_msd):
    loaded = scans.load_cases(scans.find_cases(small_msd))
    ds = scans.LabelledSlices(loaded, size=(48, 64), transform=segmentation_augment("default"))
    img, mask = ds[5]
    assert img.shape == (1, 48, 64) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert mask.shape == (48, 64) and mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1, 2}
    assert len(ds) == sum(c.image.shape[2] for c in loaded)
    un = scans.UnlabelledSlices(loaded, size=(48, 64))
    x = un[(0, 0)]  # keys (epoch, index), as engine.ResumableSampler gives them
    assert x.shape == (1, 48, 64) and x.dtype == torch.float32
    top, left, h, w = un.stack.boxes[0]
    assert h == loaded[0].image.shape[0] and w == loaded[0].image.shape[1]


def test_pretraining_sees_every_part_of_large_slices():
    """Slices larger than --size give random --size windows (no centre crop): over many items the
    windows cover every pixel; the content box stays inside the window and off the padding;
    slices no larger than --size stay centre-padded and identical at every draw."""
    big = np.arange(40 * 100 * 2, dtype=np.float32).reshape(40, 100, 2) + 1  # 40 < 48 high, 100 > 64 wide
    small = np.ones((30, 50, 1), np.float32)
    ds = scans.UnlabelledSlices([scans.LoadedCase("big", big, None, (1, 1, 1)),
                                 scans.LoadedCase("small", small, None, (1, 1, 1))], size=(48, 64),
                                transform=lambda img, box, rng: (img.copy(), box))
    seen = set()
    for epoch in range(200):
        img, (top, left, h, w) = ds[(epoch, 0)]
        assert img.shape == (48, 64) and (top, h, w) == (4, 40, 64)  # content taller than 40? no; wider than 64: yes
        inside = img[top : top + h, left : left + w]
        assert (inside > 0).all() and img.sum() == inside.sum()  # the box is exactly the content
        seen |= set(inside.ravel().tolist())
    assert seen == set(big[:, :, 0].ravel().tolist())
    assert np.array_equal(ds[(7, 0)][0], ds[(7, 0)][0])  # a window depends on (seed, epoch, index) only
    assert all(np.array_equal(ds[(e, 2)][0], ds[(0, 2)][0]) for e in range(3))
    assert ds[(0, 2)][0].shape == (48, 64) and tuple(ds[(0, 2)][1]) == (9, 7, 30, 50)


def _centroid(m):
    ys, xs = np.nonzero(m)
    return np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("level", ["light", "default"])
def test_augment_moves_image_and_mask_together(level):
    """An off-centre L-shaped blob, image = mask: after each seeded augmentation the image's bright
    region and the mask cover the same pixels up to interpolation at the border (nearest for the
    mask, linear for the image) and have the same centroid within half a pixel."""
    import random
    aug = segmentation_augment(level)
    mask = np.zeros((48, 64), np.uint8)
    mask[8:30, 10:18] = 1
    mask[22:30, 18:40] = 1
    img = mask.astype(np.float32)
    moved = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        aug.set_random_state(rng, random.Random(seed))
        out = aug(image=img, mask=mask)
        bright, m = out["image"] > 0.5, out["mask"] > 0
        assert m.sum() > 100 and np.abs(_centroid(bright) - _centroid(m)).max() < 0.5, seed
        assert (bright ^ m).sum() <= 0.15 * m.sum(), seed
        moved += not np.array_equal(m, mask > 0)
    assert moved >= 10  # the augmentations did move things
# ---------------------------------------------------------------- CLI

def test_cli_summary_reports_the_dataset(small_msd, capsys):
    """The first 6 embedded cases, as they really are: mixed dtypes, one label file stored as float32."""
    assert scans_main(["summary", str(small_msd)]) == 0
    out = capsys.readouterr().out
    for line in ("cases          6 (6 labelled)", "shape          34 x 47 x 34  to  36 x 52 x 40",
                 "image dtypes   {'uint8': 1, 'float32': 5}", "label values   {0, 1, 2}", "problems       2",
                 "hippocampus_003.nii.gz: labels stored as float32 (integer-valued; cast on load)"):
        assert line in out, line
    assert scans_main(["summary", str(small_msd), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["cases"] == 6 and s["labelled"] == 6 and set(s["label_fractions"]) == {"0", "1", "2"}
    assert sum(s["label_fractions"].values()) == pytest.approx(1.0) and s["spacing_min"] == [1.0, 1.0, 1.0]


def test_cli_summary_and_split(data_dir, tmp_path, capsys):
    out1, out2 = tmp_path / "s1.json", tmp_path / "s2.json"
    for out in (out1, out2):
        assert scans_main(["split", str(data_dir), "--seeds", "0", "1", "--out", str(out)]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    assert json.loads(out1.read_text())["num_cases"] == 260


def test_cli_bad_input_one_line_and_no_output(tmp_path, data_dir, capsys):
    (tmp_path / "bad" / "imagesTr").mkdir(parents=True)
    (tmp_path / "bad" / "labelsTr").mkdir()
    src = data_dir / "imagesTr" / "hippocampus_001.nii.gz"
    (tmp_path / "bad" / "imagesTr" / "hippocampus_001.nii.gz").write_bytes(src.read_bytes()[:3000])
    shutil.copy(data_dir / "labelsTr" / "hippocampus_001.nii.gz", tmp_path / "bad" / "labelsTr")
    assert scans_main(["summary", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hippocampus_001.nii.gz" in err[0] and "Traceback" not in err[0]
    out = tmp_path / "split.json"
    assert scans_main(["split", str(data_dir), "--fractions", "0.1", "1.5", "--out", str(out)]) == 2
    assert "label fraction must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert not out.exists()
    assert scans_main(["summary", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------- subjects and the dataset protocol

def test_split_keeps_every_subject_on_one_side():
    ids = [f"case_{i:03d}" for i in range(1, 101)]
    groups = scans.consecutive_pairs(ids)  # 50 subjects of 2 volumes
    s = scans.make_splits(ids, 0.2, 0, (0.1, 1.0), (0, 1), groups=groups)
    test_subjects = {groups[c] for c in s["test"]}
    assert not test_subjects & {groups[c] for c in s["train_pool"]}
    assert len(s["test"]) == 20 and s["subjects"] == 50 and s["groups"] == groups
    assert s == scans.make_splits(ids, 0.2, 0, (0.1, 1.0), (0, 1), groups=groups)  # deterministic
    plain = scans.make_splits(ids, 0.2, 0, (0.1, 1.0), (0, 1))
    assert plain["subjects"] == 100 and plain["groups"] == {c: c for c in ids}


def test_consecutive_pairs_rule():
    m = scans.consecutive_pairs(["hippocampus_041", "hippocampus_042", "hippocampus_043", "hippocampus_046"])
    assert m == {"hippocampus_041": "subject_021", "hippocampus_042": "subject_021",
                 "hippocampus_043": "subject_022", "hippocampus_046": "subject_023"}


def test_embedded_protocol_is_the_written_rule_and_the_data_support_it(data_dir):
    """protocol.json's subjects are exactly scans.consecutive_pairs, and the volumes of a pair share their
    acquisition fingerprint far more often than volumes of different subjects or of shifted pairs."""
    from scans.protocol import intensity_fingerprint, pairing_evidence
    protocol = scans.load_protocol(data_dir)
    ids = [c.case_id for c in scans.find_cases(data_dir)]
    assert protocol.subjects == scans.consecutive_pairs(ids) and protocol.flip_axes == (0,)
    assert len(set(protocol.subjects.values())) == 170
    prints = {c: intensity_fingerprint(scans.read_volume(data_dir / "imagesTr" / f"{c}.nii.gz").array) for c in ids}
    number = {c: int(c[-3:]) for c in ids}
    pairs = [(a, b) for a in ids for b in ids if number[b] == number[a] + 1 and number[a] % 2 == 1]
    shifted = [(a, b) for a in ids for b in ids if number[b] == number[a] + 1 and number[a] % 2 == 0]
    others = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:: 7] if protocol.subjects[a] != protocol.subjects[b]]
    same, shift, other = (pairing_evidence(prints, p) for p in (pairs, shifted, others))
    assert same["pairs"] == 90 and same["same_step"] > 0.8 and same["same_dtype"] == 1.0
    assert shift["same_step"] < 0.2 and other["same_step"] < 0.1
    assert same["median_p99_rel_diff"] < 0.05 < other["median_p99_rel_diff"]


def test_cli_split_records_subjects_and_takes_a_groups_file(data_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert scans_main(["split", str(data_dir), "--out", str(out)]) == 0
    assert "(170 subjects, none on both sides)" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert not {s["groups"][c] for c in s["test"]} & {s["groups"][c] for c in s["train_pool"]}
    groups = tmp_path / "g.json"
    groups.write_text(json.dumps({c: "one" if i < 130 else c for i, c in enumerate(sorted(s["groups"]))}))
    assert scans_main(["split", str(data_dir), "--groups", str(groups), "--out", str(out)]) == 0
    s, big = json.loads(out.read_text()), set(sorted(s["groups"])[:130])
    assert s["subjects"] == 131 and (big <= set(s["test"]) or not big & set(s["test"]))
    for bad, why in (("[1, 2]", "expected a JSON object, got list"), ('{"a": [1]}', "a subject map is a JSON object")):
        groups.write_text(bad)
        assert scans_main(["split", str(data_dir), "--groups", str(groups), "--out", str(out)]) == 2
        assert f"g.json: {why}" in capsys.readouterr().err


def test_protocol_errors_name_the_file(tmp_path):
    (tmp_path / "protocol.json").write_text('{"flip_axes": [3]}')
    with pytest.raises(scans.ScanError, match="protocol.json: flip_axes must be a list of volume axes"):
        scans.load_protocol(tmp_path)
    (tmp_path / "protocol.json").write_text('{"subject": {}}')
    with pytest.raises(scans.ScanError, match=r"protocol.json: unknown keys \['subject'\]"):
        scans.load_protocol(tmp_path)
    assert scans.load_protocol(tmp_path / "nowhere") == scans.Protocol()


def test_normalization_presets_and_ct_window():
    import argparse
    parse = lambda *a: scans.normalization_of(argparse.Namespace(norm=a[0], window=list(a[1:]) or None))  # noqa: E731
    assert parse("percentile") == scans.Normalization()  # the default every earlier run used
    assert parse("zscore").mode == "zscore"
    ct = parse("ct", 40.0, 400.0)
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]])
    np.testing.assert_allclose(scans.normalize(hu, ct)[0, 0], [0, 0, 0.5, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="--window"):
        parse("ct")
    with pytest.raises(ValueError, match="--norm ct only"):
        parse("zscore", 40.0, 400.0)


def test_split_never_writes_over_a_file_that_is_not_a_split(data_dir, tmp_path, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(data_dir, ds, ignore=lambda d, names: [n for n in names if n.endswith(".nii.gz") and n > "hippocampus_02"])
    (ds / "dataset.json").write_text(json.dumps({"name": "copy", "labels": {"0": "background", "1": "A", "2": "P"}}))
    meta = (ds / "dataset.json").read_bytes()
    assert scans_main(["split", str(ds), "--out", str(ds / "dataset.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a split file" in err and (ds / "dataset.json").read_bytes() == meta
    assert scans_main(["split", str(ds), "--out", str(ds / "splits.json")]) == 0  # a new file in the folder: fine
    assert scans_main(["split", str(ds), "--seeds", "1", "--out", str(ds / "splits.json")]) == 0  # a split: replaced
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({}))
    assert scans_main(["split", str(ds), "--groups", str(groups), "--out", str(groups)]) == 2
    assert "--groups file" in capsys.readouterr().err and groups.read_text() == "{}"


def test_non_finite_voxels_are_replaced_with_a_warning_before_normalisation(capsys):
    clean = np.random.default_rng(0).random((20, 24, 6)).astype(np.float32) * 100 + 10
    dirty = clean.copy()
    dirty[0, :5, 0], dirty[3, 3, 3], dirty[4, 4, 4] = np.nan, np.inf, -np.inf
    fixed = scans.replace_nonfinite(dirty, "scan.nii.gz")
    err = capsys.readouterr().err
    assert "scan.nii.gz" in err and "7 voxels" in err and "not finite" in err
    assert np.isfinite(fixed).all() and fixed[0, 0, 0] == np.nanmin(np.where(np.isfinite(dirty), dirty, np.nan))
    ok = np.isfinite(dirty)
    np.testing.assert_allclose(scans.normalize(fixed)[ok], scans.normalize(clean)[ok], atol=0.02)
    assert scans.replace_nonfinite(clean, "x") is clean and capsys.readouterr().err == ""
