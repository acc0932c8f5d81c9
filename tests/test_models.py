"""models: encoder registry, U-Net / TransUNet shapes, exact encoder transfer, heads, permutations."""
import json
import os

import pytest
import timm
import torch

import models

ARCHS = ["unet", "transunet"]
BIG = ("unet", "resnet50")  # tested on small inputs


def randomise(module, seed=0):
    """Fill every floating tensor (parameters and BN statistics) with random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return module


@pytest.mark.parametrize("name", models.list_encoders())
def test_encoder_reports_its_real_output_shapes(name):
    enc = models.create_encoder(name, in_chans=1).eval()
    size = 32 if name in BIG else 64
    with torch.no_grad():
        feats = enc(torch.randn(1, 1, size, size))
    assert [f.shape[1] for f in feats] == enc.channels
    assert [size // f.shape[2] for f in feats] == enc.reductions
    assert [size // f.shape[3] for f in feats] == enc.reductions
    assert enc.name == name
    assert json.loads(json.dumps(enc.config))["in_chans"] == 1


def test_unet_encoder_widths_and_timm_truncation():
    tiny = models.create_encoder("unet_tiny")
    assert tiny.channels == [8, 16, 32, 64, 128] and tiny.reductions == [1, 2, 4, 8, 16]
    assert models.create_encoder("unet_small").channels[0] == 16
    r18 = models.create_encoder("resnet18", max_reduction=16)
    assert r18.reductions == [2, 4, 8, 16]
    assert not any(k.startswith("model.layer4") for k in r18.state_dict())  # deeper layers are dropped
    with pytest.raises(ValueError, match="max_reduction=12"):
        models.create_encoder("unet_tiny", max_reduction=12)


def test_unknown_encoder_and_arch_are_errors():
    with pytest.raises(ValueError, match="'nosuch'.*unet_tiny.*resnet18"):
        models.create_encoder("nosuch")
    with pytest.raises(ValueError, match=r"unknown architecture 'fcn': expected one of \['transunet', 'unet'\]"):
        models.create_segmenter("fcn", "unet_tiny", 2)
    # one registry idiom: encoders, architectures and pretext tasks are factories added with @REGISTRY.register
    registry = models.Registry("widget")
    @registry.register
    def gear(**kw):
        return kw
    assert registry.lookup("gear") is gear and registry.names() == ["gear"]
    with pytest.raises(ValueError, match="two widgets are called 'gear'"):
        registry.register(lambda: None, name="gear")
    enc = models.create_encoder("timm:regnetx_002")  # any timm model with features_only
    assert enc.name == "regnetx_002" and len(enc.channels) == len(enc.reductions)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", models.list_encoders())
def test_logits_have_the_input_size(arch, name):
    kwargs = dict(size="tiny") if arch == "transunet" else {}
    seg = models.create_segmenter(arch, name, num_classes=3, in_chans=1, **kwargs).eval()
    assert seg.arch == arch and isinstance(seg.encoder, models.Encoder)
    with torch.no_grad():
        for hw in [(48, 64), (35, 51)]:
            assert seg(torch.randn(1, 1, *hw)).shape == (1, 3, *hw)


@pytest.mark.parametrize("arch, kwargs", [("unet", dict(up="transpose")), ("unet", dict(up="bilinear")),
                                          ("transunet", dict(n_skip=4))])
def test_training_step_reaches_the_encoder(arch, kwargs):
    seg = models.create_segmenter(arch, "unet_tiny", num_classes=2, **kwargs).train()
    seg(torch.randn(2, 1, 35, 51)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in seg.encoder.parameters())


def test_bad_segmenter_arguments():
    with pytest.raises(ValueError, match="up='nearest'"):
        models.create_segmenter("unet", "unet_tiny", 2, up="nearest")
    with pytest.raises(ValueError, match="deepest stride of 16"):
        models.create_segmenter("transunet", models.create_encoder("resnet18"), 2)
    with pytest.raises(ValueError, match="in_chans=1 but encoder 'unet_tiny'"):
        models.create_segmenter("unet", models.create_encoder("unet_tiny", in_chans=3), 2)
    with pytest.raises(ValueError, match="heads=5"):
        models.create_segmenter("transunet", "unet_tiny", 2, heads=5)


@pytest.mark.parametrize("name", ["unet_tiny", "resnet18"])
def test_encoder_transfers_exactly_into_unet_and_transunet(tmp_path, name):
    enc = randomise(models.create_encoder(name))
    perms = models.jigsaw_permutations(10)
    path = models.save_encoder(tmp_path / "enc.pt", enc, pretext="jigsaw", permutations=perms)
    assert os.listdir(tmp_path) == ["enc.pt"]  # no temporary file left behind
    saved = enc.state_dict()
    for arch in ARCHS:
        seg = models.create_segmenter(arch, name, num_classes=3)
        summary = models.load_encoder(seg, path)
        own = seg.encoder.state_dict()
        assert summary["loaded"] == len(own) and summary["meta"]["pretext"] == "jigsaw"
        assert torch.equal(summary["meta"]["permutations"], perms)
        assert all(torch.equal(v, saved[k]) for k, v in own.items())
        assert sorted(summary["skipped"]) == sorted(saved.keys() - own.keys())  # TransUNet stops at 1/16
    assert models.load_checkpoint_meta(path)["name"] == name
    rebuilt, _ = models.encoder_from_checkpoint(path)
    assert all(torch.equal(v, saved[k]) for k, v in rebuilt.state_dict().items())


def test_mismatched_checkpoints_fail_loudly(tmp_path):
    path = models.save_encoder(tmp_path / "tiny.pt", models.create_encoder("unet_tiny"))
    with pytest.raises(ValueError, match="checkpoint encoder 'unet_tiny'.*model encoder 'resnet18'"):
        models.load_encoder(models.create_segmenter("unet", "resnet18", 3), path)
    with pytest.raises(ValueError, match="'in_chans': 1.*'in_chans': 3"):
        models.load_encoder(models.create_segmenter("unet", "unet_tiny", 3, in_chans=3), path)
    with pytest.raises(ValueError, match="'base_width': 8.*'base_width': 16"):
        models.load_encoder(models.create_encoder("unet_tiny", base_width=16), path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        models.load_encoder(models.create_encoder("unet_tiny"), tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an encoder checkpoint"):
        models.load_encoder(models.create_encoder("unet_tiny"), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no registry name"):
        models.save_encoder(tmp_path / "x.pt", models.UNetEncoder())
    with pytest.raises(ValueError, match=r"meta\['where'\] is a PosixPath"):
        models.save_encoder(tmp_path / "x.pt", models.create_encoder("unet_tiny"), where=tmp_path)


@pytest.mark.parametrize("edit, key", [("add", "stages.9.weight"), ("drop", "stages.0.0.0.weight"),
                                       ("reshape", "stages.4.1.1.1.running_mean")])
def test_missing_unexpected_or_misshapen_keys_fail(tmp_path, edit, key):
    path = models.save_encoder(tmp_path / "enc.pt", models.create_encoder("unet_tiny"))
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["state_dict"]
    if edit == "add":
        sd[key] = torch.zeros(1)
    elif edit == "drop":
        del sd[key]
    else:
        sd[key] = torch.zeros(3)
    torch.save(ckpt, path)
    model = models.create_encoder("unet_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        models.load_encoder(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_truncated_checkpoint_cannot_fill_a_deeper_encoder(tmp_path):
    path = models.save_encoder(tmp_path / "r16.pt", models.create_encoder("resnet18", max_reduction=16))
    with pytest.raises(ValueError, match="missing 30.*layer4"):
        models.load_encoder(models.create_encoder("resnet18"), path)


def test_imagenet_init_from_a_local_timm_weights_file(tmp_path):
    rgb = timm.create_model("resnet18")
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(rgb.state_dict(), path)
    sd = rgb.state_dict()
    enc = models.create_encoder("resnet18", in_chans=1, pretrained_file=path)
    assert torch.allclose(enc.model.conv1.weight, sd["conv1.weight"].sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(enc.model.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(enc.model.bn1.running_var, sd["bn1.running_var"])
    enc3 = models.create_encoder("resnet18", in_chans=3, pretrained_file=path, max_reduction=16)
    assert torch.equal(enc3.model.conv1.weight, sd["conv1.weight"])
    torch.save({k: v for k, v in sd.items() if not k.startswith("layer2")}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing 25"):
        models.create_encoder("resnet18", pretrained_file=tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.create_encoder("unet_tiny", pretrained_file=path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        models.create_encoder("resnet18", pretrained_file=tmp_path / "nowhere.pth")


def test_jigsaw_permutations_are_deterministic_distinct_and_far_apart():
    perms = models.jigsaw_permutations(100, 9, seed=0)
    assert perms.shape == (100, 9) and perms.dtype == torch.int64
    assert torch.equal(perms, models.jigsaw_permutations(100, 9, seed=0))
    assert not torch.equal(perms, models.jigsaw_permutations(100, 9, seed=1))
    assert (perms.sort(dim=1).values == torch.arange(9)).all()
    assert len({tuple(p) for p in perms.tolist()}) == 100
    dist = (perms[:, None] != perms[None]).sum(-1) + 9 * torch.eye(100, dtype=torch.long)
    assert dist.min() >= 6
    assert len({tuple(p) for p in models.jigsaw_permutations(24, 4).tolist()}) == 24
    with pytest.raises(ValueError, match="num_permutations=25"):
        models.jigsaw_permutations(25, 4)


def test_pretext_heads_shapes():
    enc = models.create_encoder("unet_tiny")
    feats = models.pooled_features(enc, torch.randn(4, 1, 32, 32))
    assert feats.shape == (4, 128)
    assert models.RotationHead(128)(feats).shape == (4, 4)
    jig = models.JigsawHead(128, num_tiles=9, num_permutations=100)
    assert jig(torch.randn(4, 9, 128)).shape == (4, 100)
    with pytest.raises(ValueError, match=r"expected \(B, 9, C\)"):
        jig(torch.randn(4, 8, 128))
    proj = models.simclr_projection_head(128, hidden=64, out=32)
    assert isinstance(proj, models.SimCLRProjectionHead) and proj(feats).shape == (4, 32)


def test_paper_transunet_size():
    seg = models.create_segmenter("transunet", "resnet50", num_classes=9, in_chans=3, img_size=224).eval()
    n = models.count_parameters(seg) / 1e6
    assert 94 <= n <= 116, n  # Chen et al. 2021 report 105.3 M for R50-ViT-B/16
    assert seg.size == "paper" and seg.grid == (14, 14) and len(seg.blocks) == 12
    assert seg.encoder.reductions == [2, 4, 8, 16]
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 35, 51)).shape == (1, 9, 35, 51)
