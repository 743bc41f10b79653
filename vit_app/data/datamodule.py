"""One DataModule for every dataset kind: the built-in synthetic shapes, CIFAR-10/100 and ImageFolder subsets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vit_app.data.folder import BadImage, ImageFolderDataset, collate_skipping_bad, find_classes, read_class_subset
from vit_app.data.memory import TensorBatchLoader
from vit_app.data.roots import CIFAR_FOLDERS, root_hint
from vit_app.data.sampling import EpochSampler, ResumableDataLoader, SeededTransform
from vit_app.data.synthetic import SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, SyntheticShapes
from vit_app.data.transforms import InputSpec, TrainCrop, build_eval_transform, build_train_transform
from vit_app.errors import ConfigError, UserError, require

DatasetKind = Literal["synthetic", "cifar10", "cifar100", "imagefolder"]
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


def _cifar_class(kind: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if kind == "cifar10" else CIFAR100


def _cifar_classes(kind: str, root: str | None) -> list[str]:
    meta_names = {"cifar10": ("batches.meta", "label_names"), "cifar100": ("meta", "fine_label_names")}
    if root is not None:
        meta = Path(root) / CIFAR_FOLDERS[kind] / meta_names[kind][0]
        if meta.is_file():
            import pickle

            with open(meta, "rb") as f:  # the official release's metadata: a dict of lists of str
                return [str(c) for c in pickle.load(f, encoding="latin1")[meta_names[kind][1]]]
    if kind == "cifar10":
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return [f"class_{i:03d}" for i in range(100)]  # replaced by the real names once the data is on disk


def held_out_count(val_holdout: float, n: int) -> int:
    """Images held out of n: a count as given, a share (0 < v < 1) rounded, at least 1."""
    return max(1, round(val_holdout * n)) if 0 < val_holdout < 1 else int(val_holdout)


def _some(names: list[str], n: int = 6) -> str:
    """The first few names, for messages."""
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _decode_folder(ds: ImageFolderDataset, indices: list[int], pixels: Any) -> tuple[torch.Tensor, list[int]]:
    """The images `indices` of an image folder decoded once through `pixels` (PIL -> (3, S, S) uint8): (images
    (N, 3, S, S), labels). An unreadable file is left out and named on stderr, never replaced."""
    from vit_app.data.images import ImageLoadError, load_image
    from vit_app.progress import bar, say

    images, labels, bad = [], [], []
    for i in _with_bar(indices, bar):
        path, label = ds.samples[i]
        try:
            images.append(pixels(load_image(path)))
            labels.append(label)
        except ImageLoadError as e:
            bad.append(f"{path}: {e.reason(path)}")
    if bad:
        say(f"data: left out {len(bad)} unreadable image(s) of {len(indices)}: " + "; ".join(bad[:3])
            + (" ..." if len(bad) > 3 else ""))  # fmt: skip
    if not images:
        raise ConfigError(f"data.root: none of the {len(indices)} images under '{ds.root}' could be read")
    return torch.stack(images), labels


def _with_bar(items: list[int], bar: Any) -> Any:
    with bar(total=len(items), desc="decoding images") as b:
        for item in items:
            yield item
            b.update()


def _as_tensors(ds: Dataset, device: str, pixels: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, H, W), int64 labels (N,)) of a CIFAR, synthetic or image-folder dataset, or a Subset of
    one, on `device`. Image files are decoded once with `pixels` (the eval transform's geometry)."""
    indices = None
    if isinstance(ds, Subset):
        ds, indices = ds.dataset, list(ds.indices)
    if isinstance(ds, ImageFolderDataset):
        x, labels = _decode_folder(ds, indices if indices is not None else list(range(len(ds))), pixels)
        return x.to(device), torch.as_tensor(labels, dtype=torch.long).to(device)
    if isinstance(ds, SyntheticShapes):
        images, labels = ds.as_arrays()
    else:  # torchvision CIFAR: .data (N, H, W, 3) uint8 and .targets
        images, labels = ds.data, ds.targets  # type: ignore[attr-defined]
    x = torch.as_tensor(images).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(labels, dtype=torch.long)
    if indices is not None:
        x, y = x[indices], y[indices]
    return x.to(device), y.to(device)


class PredictFiles(Dataset):
    """Image files for prediction; an unreadable one yields a zero image and its error instead of raising."""

    def __init__(self, paths: list[str], transform, img_size: int) -> None:
        self.paths, self.transform, self.img_size = paths, transform, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from vit_app.data.images import ImageLoadError, load_image

        path = self.paths[i]
        try:
            x, error = self.transform(load_image(path)), ""
        except Exception as e:  # reported by the prediction writer, never silently replaced
            reason = e.reason(path) if isinstance(e, ImageLoadError) else f"{type(e).__name__}: {e}"
            x, error = torch.zeros(3, self.img_size, self.img_size), reason
        return {"x": x, "index": i, "path": path, "error": error}


class PredictSplit(Dataset):
    """A dataset split for prediction, with a path for each item (the file for ImageFolder, else split/index)."""

    def __init__(self, base: Dataset, transform, name: str, img_size: int) -> None:
        self.base, self.transform, self.name, self.img_size = base, transform, name, img_size

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, _ = self.base[i]
        samples = getattr(self.base, "samples", None)
        path = samples[i][0] if samples is not None else f"{self.name}/{i}"
        if isinstance(img, BadImage):  # reported in the predictions, like a bad file under predict_path
            x = torch.zeros(3, self.img_size, self.img_size)
            return {"x": x, "index": i, "path": path, "error": img.reason}
        return {"x": self.transform(img), "index": i, "path": path, "error": ""}


class ViTDataModule(L.LightningDataModule):
    """Train/val/test loaders for `dataset`; num_classes, class names, image size and normalisation live here.

    Args:
        dataset: synthetic (built in, offline default), cifar10, cifar100 or imagefolder.
        root: data folder. CIFAR: the folder holding cifar-10-batches-py / cifar-100-python. ImageFolder: the
            folder holding <train_split>/ and <val_split>/, each with one sub-folder a class. Unused for synthetic.
        download: CIFAR only: fetch the dataset into root if it is not there (needs network).
        img_size: input size; default 32 for synthetic and CIFAR, 224 for imagefolder.
        batch_size: training batch size per device.
        eval_batch_size: validation/test batch size (default: 2x batch_size).
        num_workers: loader processes; default min(4, CPUs - 1) for files on disk, 0 for in-memory data.
        train_split: ImageFolder: the training sub-folder.
        val_split: ImageFolder: the validation sub-folder (also used for test).
        class_subset: ImageFolder: a file of class folder names, one a line, to train on a subset of the classes.
        class_names: the model's classes in output order (default: the dataset's). An ImageFolder reads these
            folders; other datasets must have this many classes. validate / test / predict set it from the
            checkpoint's model card.
        val_holdout: training images held out for validation: a count (5000), or a share of the training set
            between 0 and 1 (0.1: 10 %, whatever the dataset's size); 0 validates on the test split (image folders:
            on the val folder).
        synthetic_train_size: synthetic: number of training images.
        synthetic_val_size: synthetic: number of validation (and test) images.
        rand_augment: timm RandAugment config string, e.g. "rand-m9-mstd0.5-inc1"; None turns it off.
        train_crop: "pad" (CIFAR-style pad + random crop), "rrc" (random-resized-crop), "none" (flip only) or
            "auto" (pad up to 64 px, rrc above).
        rrc_scale: area range of the random-resized-crop.
        flip: training images' horizontal flip: "random" (each image, each epoch, with probability 1/2) or
            "alternate" (the "memory" loader: at random in epoch 0, then the other way from the epoch before, so
            every two epochs show each image both ways; airbench's alternating flip).
        crop_pct: eval: centre-crop fraction (resize to img_size / crop_pct, crop img_size); default 1.0 for small
            images, 0.875 for 224 px.
        mean: normalisation mean; default per dataset.
        std: normalisation std; default per dataset.
        seed: seed of the hold-out split, the synthetic streams and the in-memory loader's shuffles.
        loader: "torch" (DataLoader, per-image transforms in worker processes) or "memory" (the whole
            uint8 set in one tensor, cropped and flipped in batches; far cheaper for small images; image files are
            decoded once, resized and centre-cropped as the eval transform does).
        memory_device: where the "memory" loader keeps the data and augments it: "cpu" or "cuda" (GPU-resident).
        predict_split: what `vit-app predict` runs over: the train, val or test split (eval transform)...
        predict_path: ...or image files under this folder / glob pattern instead (unreadable files are reported).
    """

    def __init__(
        self,
        dataset: DatasetKind = "synthetic",
        root: str | None = None,
        download: bool = False,
        img_size: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        class_subset: str | None = None,
        class_names: list[str] | None = None,
        val_holdout: int | float = 0,
        synthetic_train_size: int = 20000,
        synthetic_val_size: int = 2000,
        rand_augment: str | None = None,
        train_crop: TrainCrop = "auto",
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        flip: Literal["random", "alternate"] = "random",
        crop_pct: float | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        seed: int = 0,
        loader: Literal["torch", "memory"] = "torch",
        memory_device: str = "cpu",
        predict_split: Literal["train", "val", "test"] = "test",
        predict_path: str | None = None,
    ) -> None:
        super().__init__()
        require(batch_size >= 1, "data.batch_size", "be 1 or more", batch_size)
        require(eval_batch_size is None or eval_batch_size >= 1, "data.eval_batch_size", "be 1 or more",
                eval_batch_size)  # fmt: skip
        require(num_workers is None or num_workers >= 0, "data.num_workers", "be 0 or more", num_workers)
        require(val_holdout >= 0 and (val_holdout < 1 or float(val_holdout).is_integer()), "data.val_holdout",
                "be 0 (validate on the test split), a share between 0 and 1 (0.1), or a whole count (5000)",
                val_holdout)  # fmt: skip
        require(synthetic_train_size >= 1, "data.synthetic_train_size", "be 1 or more", synthetic_train_size)
        require(synthetic_val_size >= 1, "data.synthetic_val_size", "be 1 or more", synthetic_val_size)
        require(0 < rrc_scale[0] <= rrc_scale[1] <= 1, "data.rrc_scale", "be [low, high] with 0 < low <= high <= 1",
                list(rrc_scale))  # fmt: skip
        require(memory_device == "cpu" or memory_device.startswith("cuda"), "data.memory_device", "be cpu or cuda",
                memory_device)  # fmt: skip
        self.kind = dataset
        self.root = os.path.expanduser(root) if root else root
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.class_subset = class_subset
        self.train_split, self.val_split = train_split, val_split
        self.val_holdout = val_holdout
        self.seed = seed
        self.synthetic_sizes = (synthetic_train_size, synthetic_val_size)
        self.predict_split, self.predict_path = predict_split, predict_path
        given = list(class_names) if class_names is not None else None
        if dataset == "synthetic":
            self.class_names = self._model_classes(list(SHAPES), given)
            default_size, default_stats = 32, (SYNTHETIC_MEAN, SYNTHETIC_STD)
        elif dataset in CIFAR_STATS:
            self._check_cifar_root()
            self.class_names = self._model_classes(_cifar_classes(dataset, self.root), given)
            default_size, default_stats = 32, CIFAR_STATS[dataset]
        elif dataset == "imagefolder":
            if root is None:
                raise ConfigError(
                    "data.root is required for dataset 'imagefolder' (the folder holding train/ and val/)"
                )
            subset = read_class_subset(os.path.expanduser(class_subset)) if class_subset else None
            names = given if given is not None else subset
            train_dir, val_dir = Path(self.root) / train_split, Path(self.root) / val_split  # type: ignore[arg-type]
            for d in (train_dir, val_dir):
                if not d.is_dir():
                    hint = root_hint(self.root, "imagefolder", train_split, val_split)
                    raise ConfigError(f"data.root: folder '{d}' does not exist{hint}; expected "
                                      "<root>/<split>/<class>/<image>")  # fmt: skip
            self.class_names = find_classes(train_dir, names, keep_order=given is not None)
            find_classes(val_dir, self.class_names)  # the same classes must exist for validation
            extra = sorted(set(find_classes(val_dir)) - set(self.class_names)) if names is None else []
            if extra:  # classes read from train/: a val/ class it lacks is a likely misplaced folder
                warnings.warn(f"data.root: '{val_dir}' has class folders that '{train_dir}' lacks, left out of "
                              f"evaluation: {_some(extra)}", stacklevel=2)  # fmt: skip
            default_size, default_stats = 224, (None, None)  # InputSpec's defaults: ImageNet's
        else:
            raise ConfigError(
                f"data.dataset: unknown dataset {dataset!r}; choose synthetic, cifar10, cifar100, imagefolder"
            )
        try:
            size = img_size if img_size is not None else default_size
            spec = InputSpec.create(size, crop_pct, mean or default_stats[0],
                                    std or default_stats[1])  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"data.{e}") from None
        self.img_size, self.crop_pct, self.mean, self.std = spec.img_size, spec.crop_pct, spec.mean, spec.std
        if loader == "memory":
            if rand_augment:
                raise ConfigError("data.rand_augment works on PIL images: use data.loader 'torch' with it")
            if train_crop == "rrc":
                raise ConfigError("data.train_crop: the 'memory' loader does 'pad' or 'none', not 'rrc'")
        elif flip == "alternate":
            raise ConfigError("data.flip 'alternate' needs data.loader 'memory' (it mirrors by image and epoch)")
        require(flip in ("random", "alternate"), "data.flip", "be 'random' or 'alternate'", flip)
        self.flip = flip
        self.loader, self.memory_device = loader, memory_device
        self.train_crop = train_crop
        cpus = os.cpu_count() or 1
        in_memory = dataset == "synthetic" or loader == "memory"
        self.num_workers = num_workers if num_workers is not None else (0 if in_memory else min(4, cpus - 1))
        self.train_transform = build_train_transform(
            self.img_size, self.mean, self.std, train_crop, rrc_scale, rand_augment=rand_augment
        )
        self.eval_transform = build_eval_transform(spec)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _model_classes(self, dataset_names: list[str], given: list[str] | None) -> list[str]:
        """The class names to use: the dataset's, or the model's (`given`) when they can label this data."""
        if given is None:
            return dataset_names
        if self.predict_path is not None:
            return given  # files without labels: the model's classes are all that matters
        if len(given) != len(dataset_names):
            raise ConfigError(
                f"data.class_names: the model has {len(given)} classes ({_some(given)}) but the {self.kind} data "
                f"has {len(dataset_names)} ({_some(dataset_names)}); use data with the model's classes"
            )
        if given != dataset_names:
            warnings.warn(
                f"vit-app: the {self.kind} data's class names ({_some(dataset_names)}) differ from the model's "
                f"({_some(given)}); results are reported under the model's names",
                stacklevel=2,
            )
        return given

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.img_size, self.crop_pct, self.mean, self.std)

    def _check_cifar_root(self) -> None:
        if self.root is None:
            raise ConfigError(
                f"data.root is required for dataset '{self.kind}': the folder that holds "
                f"{CIFAR_FOLDERS[self.kind]}/ (set data.download: true to fetch it there)"
            )
        folder = Path(self.root) / CIFAR_FOLDERS[self.kind]
        if not self.download and not folder.is_dir():
            hint = root_hint(self.root, self.kind, CIFAR_FOLDERS[self.kind])
            raise ConfigError(
                f"data.root: '{folder}' does not exist{hint}; "
                f"point data.root at the folder holding {CIFAR_FOLDERS[self.kind]}/, or set data.download: true to "
                "fetch it (needs network)"
            )

    def prepare_data(self) -> None:
        if self.kind in CIFAR_STATS and self.download:
            for train in (True, False):
                _cifar_class(self.kind)(self.root, train=train, download=True)
            self.class_names = _cifar_classes(self.kind, self.root)  # the real names, now that the data is here

    def _raw_split(self, split: str) -> Dataset:
        """The train, val or test dataset, yielding (PIL image, label), without transforms. Only that split is built
        (and, for a held-out validation split, the training set it is cut from)."""
        held_out = self.val_holdout > 0
        if split == "test" or (split == "val" and not held_out):
            if self.kind == "imagefolder":
                return ImageFolderDataset(Path(self.root) / self.val_split, self.class_names)  # type: ignore[arg-type]
            if self.kind == "synthetic":
                return SyntheticShapes(self.synthetic_sizes[1], seed=2000 + self.seed, img_size=self.img_size)
            return _cifar_class(self.kind)(self.root, train=False, download=False)
        if self.kind == "imagefolder":
            train: Dataset = ImageFolderDataset(Path(self.root) / self.train_split, self.class_names)  # type: ignore[arg-type]
        elif self.kind == "synthetic":
            train = SyntheticShapes(self.synthetic_sizes[0], seed=1000 + self.seed, img_size=self.img_size)
        else:
            train = _cifar_class(self.kind)(self.root, train=True, download=False)
        if not held_out:
            return train
        n = len(train)  # type: ignore[arg-type]
        k = held_out_count(self.val_holdout, n)
        if k >= n:
            raise ConfigError(f"data.val_holdout: {self.val_holdout} is not smaller than the {n} training images; "
                              "give a share instead, e.g. 0.1 (10 % of them)")  # fmt: skip
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return Subset(train, perm[k:] if split == "train" else perm[:k])

    def setup(self, stage: str | None = None) -> None:
        """Build the splits `stage` uses: fit train + val, validate val, test test, predict none (its loader reads
        what it needs)."""
        if self.kind in CIFAR_STATS:
            self.class_names = _cifar_classes(self.kind, self.root)  # another process may have downloaded it
        for split in STAGE_SPLITS.get(stage or "", ("train", "val", "test")):
            if getattr(self, f"{split}_set") is not None:
                continue
            raw = self._raw_split(split)
            if self.loader == "memory":
                built: Any = _as_tensors(raw, self.memory_device, self.eval_transform.pixels)
            else:
                transform = self.train_transform if split == "train" else self.eval_transform
                built = SeededTransform(raw, transform, self.seed)
            setattr(self, f"{split}_set", built)
            if split == "train":
                self._check_one_batch()

    def _check_one_batch(self) -> None:
        """Training batches are always full (drop_last): refuse a batch size larger than a process's share of the
        training images, which would train on nothing."""
        ds: Any = self.train_set
        n, world = len(ds[1]) if self.loader == "memory" else len(ds), self._rank_world()[1]
        if n // world < self.batch_size:
            share = f" ({n // world} a process over {world})" if world > 1 else ""
            raise ConfigError(f"data.batch_size: {self.batch_size} is more than the {n} training images{share}, and a "
                              "training batch is always full: lower data.batch_size")  # fmt: skip

    def _loader(self, ds: Any, train: bool) -> DataLoader | TensorBatchLoader:
        assert ds is not None, "call setup() first"
        if self.loader == "memory":
            images, labels = ds
            pad = 0 if self.train_crop == "none" else self.img_size // 8
            batch = self.batch_size if train else self.eval_batch_size
            alternate = train and self.flip == "alternate"
            loader = TensorBatchLoader(images, labels, batch, self.mean, self.std, train, pad, seed=self.seed,
                                       alternate_flip=alternate)  # fmt: skip
            loader.rank, loader.world_size = self._rank_world()
            return loader
        common = dict(
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds never draw on the global RNG
            collate_fn=collate_skipping_bad,  # unreadable files leave the batch and are reported
        )
        if train:  # order and augmentation from (seed, epoch, index); resumable mid-epoch
            rank, world = self._rank_world()
            sampler = EpochSampler(ds, shuffle=True, seed=self.seed, rank=rank, world_size=world)
            return ResumableDataLoader(ds, sampler, batch_size=self.batch_size, drop_last=True, **common)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, **common)

    def train_batches_per_epoch(self) -> int:
        """Training batches per epoch and process, known without building the loader (for LR schedules)."""
        assert self.train_set is not None, "call setup() first"
        n = len(self.train_set[1]) if self.loader == "memory" else len(self.train_set)  # type: ignore[arg-type]
        return (n // self._rank_world()[1]) // self.batch_size

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> DataLoader | TensorBatchLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | TensorBatchLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | TensorBatchLoader:
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of {"x", "index", "path", "error"}: every image of the predict split or path, in order."""
        if self.predict_path is not None:
            from vit_app.inputs import describe_skipped, expand_inputs, require_images

            found = expand_inputs([self.predict_path])
            try:
                require_images(found, [self.predict_path])
            except UserError as e:
                raise ConfigError(f"data.predict_path: {e}") from None
            if found.skipped:
                warnings.warn(f"vit-app predict: {describe_skipped(found.skipped)}", stacklevel=2)
            ds: Dataset = PredictFiles(found.paths, self.eval_transform, self.img_size)
        else:
            split = self._raw_split(self.predict_split)
            ds = PredictSplit(split, self.eval_transform, self.predict_split, self.img_size)
        return DataLoader(ds, batch_size=self.eval_batch_size, num_workers=self.num_workers, shuffle=False)
