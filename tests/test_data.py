"""Datasets, transforms and loaders: synthetic shapes, class subsets, CIFAR, the in-memory loader."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_app.data.datamodule import ViTDataModule
from vit_app.data.folder import read_class_subset
from vit_app.data.memory import TensorBatchLoader, random_crop_flip
from vit_app.data.synthetic import SHAPES, SyntheticShapes, render_sample
from vit_app.data.transforms import InputSpec, LimitAspect, build_eval_transform
from vit_app.errors import ConfigError


def test_synthetic_is_deterministic_and_has_masks() -> None:
    a_img, a_lab, a_mask = render_sample(3, 17, 32)
    b_img, b_lab, b_mask = render_sample(3, 17, 32)
    assert np.array_equal(a_img, b_img) and a_lab == b_lab and np.array_equal(a_mask, b_mask)
    c_img, _, _ = render_sample(4, 17, 32)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (32, 32, 3) and a_img.dtype == np.uint8 and a_mask.shape == (32, 32)
    assert 0.05 < a_mask.mean() < 0.8  # an object, not the whole image


def test_synthetic_classes_are_balanced_and_colour_carries_no_label() -> None:
    ds = SyntheticShapes(1200, seed=0)
    samples = [ds.sample(i) for i in range(1200)]
    labels = np.array([lab for _, lab, _ in samples])
    counts = np.bincount(labels, minlength=len(SHAPES))
    assert counts.min() > 150  # ~200 each
    colours = np.array([img[mask].mean(0) for img, _, mask in samples])  # mean object colour per image (0..255)
    se = colours.std(0) / np.sqrt(counts.min())  # standard error of a class mean
    for c in range(len(SHAPES)):
        gap = np.abs(colours[labels == c].mean(0) - colours.mean(0))
        assert (gap < 4.5 * se).all(), f"class {SHAPES[c]}: mean colour stands apart ({gap} vs se {se})"


def test_mask_matches_where_the_object_was_drawn() -> None:
    img, _, mask = render_sample(0, 5, 32)
    bg_seed_only = render_sample(0, 5, 32)[0]
    assert np.array_equal(img, bg_seed_only)
    assert mask.sum() > 0 and (~mask).sum() > 0


def test_class_subset_file(tmp_path: Path) -> None:
    f = tmp_path / "subset.txt"
    f.write_text("# imagenette\nn01440764\n\n n02102040  # springer\n")
    assert read_class_subset(f) == ["n01440764", "n02102040"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="lists no classes"):
        read_class_subset(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        read_class_subset(tmp_path / "missing.txt")


def test_imagefolder_subset_from_real_tree(imagenette_root: Path, tmp_path: Path) -> None:
    f = tmp_path / "subset.txt"
    f.write_text("n03888257\nn01440764\n")
    dm = ViTDataModule("imagefolder", root=str(imagenette_root), class_subset=str(f), num_workers=0)
    assert dm.class_names == ["n01440764", "n03888257"] and dm.num_classes == 2
    dm.setup()
    assert len(dm.train_set) == 200 and len(dm.val_set) == 100
    x, y = dm.train_set[150]
    assert x.shape == (3, 224, 224) and y == 1
    f.write_text("n01440764\nn99999999\n")
    with pytest.raises(ConfigError, match="n99999999"):
        ViTDataModule("imagefolder", root=str(imagenette_root), class_subset=str(f))


def test_cifar10_real_data(cifar_root: Path) -> None:
    dm = ViTDataModule("cifar10", root=str(cifar_root), num_workers=0, val_holdout=5000)
    assert dm.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (45000, 5000, 10000)
    x, y = dm.val_set[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10


def test_batched_crop_equals_per_image_crop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, generator=g, flip=False)
    g2 = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (6,), generator=g2)
    dx = torch.randint(0, 5, (6,), generator=g2)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])


def test_memory_loader_epochs_shards_and_normalisation() -> None:
    imgs = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 4, 4).contiguous()
    labels = torch.arange(20)
    mk = lambda: TensorBatchLoader(imgs, labels, 5, (0.0,) * 3, (1 / 255,) * 3, train=True, padding=0, flip=False)  # noqa: E731
    a, b = mk(), mk()
    ep0 = torch.cat([y for _, y in a])
    assert sorted(ep0.tolist()) == list(range(20))
    assert torch.equal(ep0, torch.cat([y for _, y in b]))  # reproducible
    a.sampler.set_epoch(1)
    assert not torch.equal(ep0, torch.cat([y for _, y in a]))  # each epoch reshuffles
    x, y = next(iter(b))
    torch.testing.assert_close(x[:, 0, 0, 0], y.float())  # pixel value = label; std 1/255 -> value
    shards = []
    for r in range(2):
        s = mk()
        s.rank, s.world_size = r, 2
        shards.append(torch.cat([y for _, y in s]))
    assert len(shards[0]) == len(shards[1]) == 10 and not set(shards[0].tolist()) & set(shards[1].tolist())


@pytest.mark.parametrize("alternate", [False, True])
def test_memory_loader_shards_see_what_one_process_sees(alternate: bool) -> None:
    # DDP with 2 ranks x batch 4 must hand out the same images, augmented the same way, as 1 process x batch 8.
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (33, 3, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(33)
    mk = lambda bs: TensorBatchLoader(imgs, labels, bs, (0.5,) * 3, (0.25,) * 3, train=True, padding=2, seed=3,  # noqa: E731
                                      alternate_flip=alternate)  # fmt: skip
    for epoch in (0, 1):
        one = mk(8)
        ranks = [mk(4), mk(4)]
        for r, s in enumerate(ranks):
            s.rank, s.world_size = r, 2
        for s in (one, *ranks):
            s.sampler.set_epoch(epoch)
        assert len(one) == len(ranks[0]) == len(ranks[1]) == 4
        for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=True):
            order = torch.argsort(torch.cat([y0, y1]))
            torch.testing.assert_close(torch.cat([x0, x1])[order], x[torch.argsort(y)])
            assert torch.equal(torch.cat([y0, y1])[order], y.sort().values)


def _mirrored(loader: TensorBatchLoader, epoch: int) -> dict[int, bool]:
    """Each image's mirroring in one epoch (the images rise from left to right, so a mirror falls)."""
    loader.sampler.set_epoch(epoch)
    return {int(i): bool(x[0, 0, 0] > x[0, 0, -1]) for xb, yb in loader for x, i in zip(xb, yb)}


def test_alternating_flip_mirrors_each_image_the_other_way_each_epoch() -> None:
    n, w = 40, 6
    imgs = (torch.arange(w) * 10).view(1, 1, 1, w).expand(n, 3, 2, w).to(torch.uint8).contiguous()
    labels = torch.arange(n)
    mk = lambda alt: TensorBatchLoader(imgs, labels, 8, (0.0,) * 3, (1 / 255,) * 3, train=True, padding=0,  # noqa: E731
                                       seed=5, alternate_flip=alt)  # fmt: skip
    alt = mk(True)
    epochs = [_mirrored(alt, e) for e in range(4)]
    assert all(len(m) == n for m in epochs)  # 40 images, batch 8: every image in every epoch
    assert 10 < sum(epochs[0].values()) < 30  # epoch 0: about half, at random
    for before, after in zip(epochs, epochs[1:]):
        assert all(after[i] != before[i] for i in range(n))  # then the other way, every epoch
    assert _mirrored(mk(True), 2) == epochs[2]  # a new loader (a resumed run) agrees
    rand = [_mirrored(mk(False), e) for e in range(4)]
    flips = sum(rand[e][i] != rand[e + 1][i] for e in range(3) for i in range(n))
    assert 0 < flips < 3 * n  # random flips: some images keep their side from one epoch to the next


def test_alternating_flip_keeps_the_random_crops() -> None:
    g = torch.Generator().manual_seed(2)
    imgs = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(24)
    mk = lambda alt: TensorBatchLoader(imgs, labels, 6, (0.0,) * 3, (1 / 255,) * 3, train=True, padding=2,  # noqa: E731
                                       seed=1, alternate_flip=alt)  # fmt: skip
    same = mirrored = 0
    for (xa, ya), (xr, yr) in zip(mk(True), mk(False), strict=True):
        assert torch.equal(ya, yr)
        for a, r in zip(xa, xr):
            same += int(torch.equal(a, r))
            mirrored += int(torch.equal(a, r.flip(-1)) and not torch.equal(a, r))
    assert same + mirrored == 24 and same > 0 and mirrored > 0  # the same crop; only the flip may differ


def test_alternating_flip_needs_the_memory_loader() -> None:
    with pytest.raises(ConfigError, match="data.flip 'alternate' needs data.loader 'memory'"):
        ViTDataModule(flip="alternate", loader="torch")
    with pytest.raises(ConfigError, match="data.flip must be 'random' or 'alternate', got 'sometimes'"):
        ViTDataModule(flip="sometimes", loader="memory")  # type: ignore[arg-type]
    assert ViTDataModule(flip="alternate", loader="memory").flip == "alternate"


def test_eval_transform_and_extreme_aspect() -> None:
    t = build_eval_transform(InputSpec(224, 0.875, (0.5,) * 3, (0.5,) * 3))
    x = t(Image.new("RGB", (300, 200), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[0], torch.ones(224, 224))
    wide = Image.new("RGB", (3000, 1))
    assert LimitAspect()(wide).size == (4, 1)
    assert t(wide).shape == (3, 224, 224)


def test_rand_augment_never_asks_pillow_for_zero_posterize_bits() -> None:
    from vit_app.data.transforms import build_train_transform

    t = build_train_transform(32, (0.5,) * 3, (0.5,) * 3, "pad", rand_augment="rand-m9-mstd0.5-inc1")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    import random

    random.seed(0)
    outs = [t(img) for _ in range(1500)]  # timm's own posterize ops fail within a few hundred draws on Pillow 13
    assert all(o.shape == (3, 32, 32) and torch.isfinite(o).all() for o in outs)


def test_memory_loader_evaluates_the_same_tensors_as_the_eval_transform() -> None:
    kw = dict(dataset="synthetic", img_size=32, batch_size=8, synthetic_train_size=16, synthetic_val_size=8)
    mem, ref = ViTDataModule(**kw, loader="memory"), ViTDataModule(**kw, loader="torch")
    mem.setup("fit")
    ref.setup("fit")
    x_mem, y_mem = next(iter(mem.val_dataloader()))
    x_ref, y_ref = next(iter(ref.val_dataloader()))
    assert torch.equal(y_mem, y_ref)
    torch.testing.assert_close(x_mem, x_ref, atol=1e-6, rtol=0)


def test_imagefolder_in_memory_with_held_out_validation(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                size = (40 + 7 * i, 30 + 5 * i)  # mixed sizes and aspect ratios
                Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    dm = ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=16, crop_pct=1.0, loader="memory",
                       val_holdout=3, batch_size=4)  # fmt: skip
    dm.setup("fit")
    (tx, ty), (vx, vy) = dm.train_set, dm.val_set
    assert tx.dtype == torch.uint8 and tx.shape[1:] == (3, 16, 16)
    assert len(ty) + len(vy) == 12 and len(vy) == 3  # 13 files, the broken one left out
    assert "left out 1 unreadable image" in capsys.readouterr().err
    # each stored image is what inference sees, before normalisation
    spec = InputSpec.create(16, 1.0, dm.mean, dm.std)
    from vit_app.data.transforms import EvalTransform

    pixels = EvalTransform(spec).pixels
    stored = {tuple(x.flatten()[:32].tolist()) for x in torch.cat([tx, vx])}
    files = sorted(p for p in (tmp_path / "train").rglob("*.png") if p.name != "broken.png")
    assert stored == {tuple(pixels(Image.open(f).convert("RGB")).flatten()[:32].tolist()) for f in files}
    dm.setup("test")
    assert len(dm.test_set[1]) == 4  # the val folder is the test split


def _tree(root: Path, splits: dict[str, dict[str, int]]) -> None:
    """root/<split>/<class>/<i>.png: 12 x 12 random images, as many as each count says."""
    rng = np.random.default_rng(1)
    for split, classes in splits.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_a_broken_file_is_named_once_in_the_report(tmp_path: Path, capsys) -> None:
    _tree(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png")
    ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=8, batch_size=2, loader="memory").setup("fit")
    err = capsys.readouterr().err
    assert "left out 1 unreadable image(s) of 7" in err and err.count("broken.png") == 1


@pytest.mark.parametrize("loader", ["memory", "torch"])
def test_a_batch_larger_than_the_training_set_is_refused(loader: str, tmp_path: Path) -> None:
    # drop_last keeps training batches full: 6 images and batch 8 would train on nothing
    _tree(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    dm = ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=8, batch_size=8, loader=loader)
    with pytest.raises(ConfigError, match=r"data.batch_size: 8 is more than the 6 training images.*lower"):
        dm.setup("fit")
    ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=8, batch_size=6, loader=loader).setup("fit")
    dm = ViTDataModule(dataset="synthetic", synthetic_train_size=20, batch_size=32, loader=loader)
    with pytest.raises(ConfigError, match="32 is more than the 20 training images"):
        dm.setup("fit")
    ViTDataModule(dataset="synthetic", synthetic_train_size=20, batch_size=32, loader=loader).setup("validate")


def test_val_classes_missing_from_train_are_named(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1, "stray": 1}})
    with pytest.warns(UserWarning, match=r"val' has class folders that .*train' lacks, left out of evaluation: stray"):
        dm = ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=8, batch_size=2)
    assert dm.class_names == ["a", "b"]
    subset = tmp_path / "subset.txt"
    subset.write_text("a\n")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class subset leaves the other folders out on purpose: no warning
        ViTDataModule(dataset="imagefolder", root=str(tmp_path), img_size=8, class_subset=str(subset))


def test_a_wrong_root_is_described_and_the_right_one_named(cifar_root: Path, tmp_path: Path) -> None:
    inner = cifar_root / "cifar-10-batches-py"
    with pytest.raises(ConfigError, match=rf"cifar-10-batches-py/ itself: give its parent, '{cifar_root.absolute()}'"):
        ViTDataModule(dataset="cifar10", root=str(inner))
    with pytest.raises(
        ConfigError, match=r"cifar-100-python' does not exist .*holds cifar-10-batches-py/: data.dataset cifar10\?"
    ):
        ViTDataModule(dataset="cifar100", root=str(cifar_root))
    _tree(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    for split in ("train", "val"):
        with pytest.raises(ConfigError, match=rf"is {split}/ itself: give its parent, '{tmp_path}'"):
            ViTDataModule(dataset="imagefolder", root=str(tmp_path / split))
    nothing = tmp_path / "nothing"
    with pytest.raises(ConfigError, match=rf"folder '.*nothing/train' does not exist \('{nothing}' does not exist\)"):
        ViTDataModule(dataset="imagefolder", root=str(nothing))
    with pytest.raises(ConfigError, match=rf"'{nothing}' does not exist\); point data.root at the folder holding"):
        ViTDataModule(dataset="cifar10", root=str(nothing))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match=r"a-file' is a file, not a folder\)"):
        ViTDataModule(dataset="cifar10", root=str(tmp_path / "a-file"))
    # Another dataset's layout: the data.dataset that reads it is suggested, both ways.
    with pytest.raises(ConfigError, match=rf"'{tmp_path}' holds train/: data.dataset imagefolder\?"):
        ViTDataModule(dataset="cifar10", root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"holds cifar-10-batches-py/: data.dataset cifar10\?"):
        ViTDataModule(dataset="imagefolder", root=str(cifar_root))


def test_a_wrong_eval_data_root_is_described_with_the_form_that_reads_it(cifar_root: Path, tmp_path: Path) -> None:
    from vit_app.evaldata import parse_data

    _tree(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    cases = {
        f"cifar10:{tmp_path}": f"holds train/: --data folder:{tmp_path / 'val'}?",
        f"cifar100:{cifar_root}": f"holds cifar-10-batches-py/: --data cifar10:{cifar_root}?",
        f"cifar10:{cifar_root / 'cifar-10-batches-py'}": f"give its parent, '{cifar_root.absolute()}'",
        f"cifar10:{tmp_path / 'gone'}": f"'{tmp_path / 'gone'}' does not exist)",
    }
    for spec, words in cases.items():
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_data(spec)


def test_val_holdout_as_a_share_holds_out_the_same_images_as_the_count() -> None:
    from vit_app.data.datamodule import held_out_count

    assert held_out_count(0.1, 50_000) == 5000 and held_out_count(5000, 50_000) == 5000
    assert held_out_count(0.001, 100) == 1 and held_out_count(0.25, 10) == 2  # at least one; rounded (2.5 -> 2)

    def split(v: float) -> tuple[list[int], list[int]]:
        dm = ViTDataModule(dataset="synthetic", synthetic_train_size=200, val_holdout=v, batch_size=16)
        return dm._raw_split("train").indices, dm._raw_split("val").indices  # type: ignore[attr-defined]

    train, val = split(0.1)
    assert (train, val) == split(20) and len(val) == 20 and not set(train) & set(val) and len(train) == 180
    for bad in (1.5, -0.1, float("inf")):
        with pytest.raises(ConfigError, match="data.val_holdout must be 0 .*a share between 0 and 1 .*a whole count"):
            ViTDataModule(dataset="synthetic", val_holdout=bad)
    with pytest.raises(ConfigError, match=r"val_holdout: 200 is not smaller than the 200 training images; give a"):
        split(200)
