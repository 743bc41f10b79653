"""In-memory uint8 datasets with batched augmentation: the whole set as one tensor, on the CPU or the GPU.

Per-sample PIL transforms cost more than a small ViT's step on a laptop CPU, and starve a GPU; here a batch is cut
from one (N, 3, H, W) uint8 tensor and augmented as a batch (random crop with padding, horizontal flip), then
normalised, on whatever device the tensor lives on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from vit_app.data.sampling import mix_seed


def random_crop_flip(
    x: Tensor,
    padding: int,
    generator: torch.Generator | None = None,
    flip: bool = True,
    rank: int = 0,
    world_size: int = 1,
    mirror: Tensor | None = None,
) -> Tensor:
    """Batched CIFAR augmentation on uint8 or float (B, C, H, W): reflect-pad, crop back at a random offset per
    image, and mirror half of the images (drawn at random, or the images where `mirror` (B,) is true).

    The random draws are made for a global batch of B * world_size images and this process takes every
    world_size-th from `rank`, so a DDP run augments each image exactly as one process with the whole batch would.
    """
    B, C, H, W = x.shape
    dev = x.device
    pick = slice(rank, None, world_size)
    if padding > 0:
        xp = F.pad(x.float() if x.dtype == torch.uint8 else x, (padding,) * 4, mode="reflect").to(x.dtype)
        dy = torch.randint(0, 2 * padding + 1, (B * world_size,), generator=generator)[pick].to(dev)
        dx = torch.randint(0, 2 * padding + 1, (B * world_size,), generator=generator)[pick].to(dev)
        rows = (dy[:, None] + torch.arange(H, device=dev))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, :]  # (B, 1, W)
        x = xp.permute(0, 2, 3, 1)[torch.arange(B, device=dev)[:, None, None], rows, cols]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        if mirror is None:
            mirror = torch.rand(B * world_size, generator=generator)[pick] < 0.5
        x = torch.where(mirror.to(dev)[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


class _EpochSetter:
    def __init__(self, loader: TensorBatchLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.epoch = epoch


class TensorBatchLoader:
    """Iterate (images, labels) batches from uint8 images (N, C, H, W) and labels (N,), already on their device.

    Each pass shuffles with a generator seeded by (seed, epoch), so a run is reproducible and every epoch differs;
    Lightning sets the epoch through `loader.sampler.set_epoch`, as it does for a DistributedSampler.
    `rank` / `world_size` give each process its own shard of every epoch's permutation (DDP), interleaved as
    DistributedSampler does: batch b of all ranks together is batch b of one process with world_size x the batch.

    `alternate_flip` (airbench, Jordan 2024): each image is mirrored at random in epoch 0, then the other way from
    the epoch before in every later epoch, so any two epochs in a row show each image both ways.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        padding: int = 4,
        flip: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        alternate_flip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.batch_size, self.train = batch_size, train
        self.padding, self.flip, self.seed = padding, flip, seed
        self.drop_last = train if drop_last is None else drop_last
        self.first_flip: Tensor | None = None  # (N,) bool: each image's mirroring in epoch 0 (alternate_flip)
        if alternate_flip:
            draws = torch.rand(len(labels), generator=torch.Generator().manual_seed(mix_seed(seed, len(labels))))
            self.first_flip = (draws < 0.5).to(images.device)
        dev = images.device
        self.mean = torch.tensor(mean, device=dev).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=dev).view(1, -1, 1, 1) * 255.0
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        self.sampler = _EpochSetter(self)  # Lightning calls loader.sampler.set_epoch(epoch) before each epoch
        self.batch_sampler = None  # Lightning inspects it; batching is ours
        self._taken = 0
        self._resume: tuple[int, int] | None = None

    def _indices(self) -> Tensor:
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        idx = idx[: n // self.world_size * self.world_size]  # equal shards: drop the tail that does not divide
        return idx[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.labels)
        n = n // self.world_size if self.train else len(range(self.rank, n, self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices().to(self.images.device)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]  # a resumed run: skip the batches this epoch already trained on
        self._resume = None
        g = torch.Generator()
        for b in range(start, len(self)):
            self._taken = b + 1
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[sel]
            if self.train:
                g.manual_seed(mix_seed(self.seed, self.epoch, b))  # each batch's augmentation from (seed, epoch, b)
                mirror = None if self.first_flip is None else self.first_flip[sel] ^ bool(self.epoch % 2)
                x = random_crop_flip(x, self.padding, g, self.flip, self.rank, self.world_size, mirror)
            yield (x.float() - self.mean) / self.std, self.labels[sel]

    def state_dict(self) -> dict[str, int]:
        """Lightning saves this in mid-epoch checkpoints: the epoch and the batches already handed out."""
        return {"epoch": self.epoch, "batches": self._taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
