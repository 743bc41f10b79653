"""The LightningModule: steps, metrics, optimiser and schedule. The model itself knows nothing of Lightning."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vit_app.data.transforms import eval_spec
from vit_app.errors import ConfigError
from vit_app.model import PRESETS, VisionTransformer, preset_config

CHECKPOINT_KEY = "vit_app"  # the checkpoint entry that holds everything inference needs
CHECKPOINT_FORMAT = 1


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over `warmup_steps`, then cosine down to `min_ratio` at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on norms, biases, position and class embeddings."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ViTClassifier(L.LightningModule):
    """Trains a VisionTransformer for classification.

    Args:
        arch: model preset (vit_cifar_tiny, vit_cifar_small, vit_tiny_patch16_224, vit_small_patch16_224,
            vit_base_patch16_224); the architecture arguments below override it when set.
        num_classes: linked from data.num_classes.
        img_size: linked from data.img_size.
        class_names: linked from data.class_names; stored in checkpoints.
        mean: linked from data.mean; stored in checkpoints.
        std: linked from data.std; stored in checkpoints.
        crop_pct: linked from data.crop_pct; stored in checkpoints.
        patch_size: override the preset's patch size.
        embed_dim: override the preset's token width.
        depth: override the preset's number of blocks.
        num_heads: override the preset's number of attention heads.
        mlp_ratio: override the preset's MLP hidden width ratio.
        qkv_bias: override the preset's qkv bias.
        class_token: override the preset's class token.
        global_pool: "token" (class token) or "avg" (mean of patch tokens).
        drop_rate: dropout before the head.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth rate of the last block (linear in depth).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay on weight matrices.
        betas: AdamW betas.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        min_lr_ratio: the cosine schedule ends at lr * min_lr_ratio.
        label_smoothing: label smoothing of the cross-entropy.
        mixup_alpha: timm Mixup alpha (0 = off).
        cutmix_alpha: timm CutMix alpha (0 = off).
        mixup_prob: probability of applying mixup or cutmix to a batch.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999); validation,
            test and inference then use the averaged weights. None = off.
    """

    def __init__(
        self,
        arch: str = "vit_cifar_tiny",
        num_classes: int = 10,
        img_size: int = 32,
        class_names: list[str] | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        crop_pct: float = 1.0,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        qkv_bias: bool | None = None,
        class_token: bool | None = None,
        global_pool: Literal["token", "avg"] | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if arch not in PRESETS:
            raise ConfigError(f"model.arch: unknown preset {arch!r}; choose one of: {', '.join(PRESETS)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.save_hyperparameters()
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.model_config = preset_config(
            arch,
            img_size=img_size,
            num_classes=num_classes,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            class_token=class_token,
            global_pool=global_pool,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        if class_token is False and global_pool is None:  # no class token to pool: average the patch tokens
            self.model_config["global_pool"] = "avg"
        self.model = VisionTransformer(**self.model_config)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.model_ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.model_ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=True)
        k5 = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")

    @property
    def eval_model(self) -> VisionTransformer:
        """The weights used for evaluation and inference: the EMA average when enabled."""
        return self.model_ema.module if self.model_ema is not None else self.model  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.eval_model(x) if not self.training else self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.mixup is not None:
            x, y_soft = self.mixup(x, y)
            logits = self.model(x)
            loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
            self.log("train/acc1", (logits.argmax(-1) == y).float().mean(), on_step=True, on_epoch=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}; "
                "try a lower model.lr, trainer.gradient_clip_val, or bf16-mixed instead of 16-mixed precision"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self.eval_model(x).float()
        acc1, acc5 = (self.val_acc1, self.val_acc5) if stage == "val" else (self.test_acc1, self.test_acc5)
        acc1.update(logits, y)
        acc5.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc1", acc1, prog_bar=True)
        self.log(f"{stage}/acc5", acc5)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        warmup = min(int(hp.warmup_epochs * per_epoch), max(0, total - 1))
        min_ratio = hp.min_lr_ratio

        def schedule(step: int) -> float:
            return warmup_cosine(step, warmup, total, min_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def inference_metadata(self) -> dict[str, Any]:
        """Plain data (safe for weights_only loading) that rebuilds the model and its eval transform."""
        hp = self.hparams
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": dict(self.model_config),
            "class_names": list(self.class_names),
            "eval_transform": eval_spec(hp.img_size, hp.crop_pct, hp.mean, hp.std),
            "weights": "model_ema.module." if self.model_ema is not None else "model.",
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.inference_metadata()
