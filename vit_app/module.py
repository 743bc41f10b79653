"""The LightningModule: training, evaluation and prediction steps, their metrics, and what a checkpoint carries.
The model knows nothing of Lightning; schedules, optimisers, weight loading and the card live in their own modules."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vit_app.card import CARD_KEY, ModelCard, Provenance, read_card
from vit_app.data.transforms import InputSpec
from vit_app.errors import CheckpointError, ConfigError, require
from vit_app.memcheck import StepShape, check_train_memory, free_memory_bytes
from vit_app.model import (
    PRESETS,
    VisionTransformer,
    ViTConfig,
    explicit_attention_faster,
    preset_config,
    whiten_patch_embed,
)
from vit_app.optim import MUON_MOMENTUM, MUON_NS_STEPS, OptimizerName, build_optimizer
from vit_app.pretrained import load_pretrained
from vit_app.rng import rng_states, set_rng_states
from vit_app.schedule import LR_SCHEDULES, TrainingClock, warmup_decay
from vit_app.tta import TTA, TTA_CHOICES, tta_logits, view_shift

# ViTClassifier arguments that are ViTConfig fields (timm's names): the CLI sets them from a checkpoint's card.
ARCH_ARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "class_token", "reg_tokens",
             "no_embed_class", "global_pool", "fc_norm")  # fmt: skip


def downsample(x: Tensor, side: int) -> Tensor:
    """A batch (B, C, H, W) resized to (B, C, side, side), bilinear and antialiased (the low-resolution phase)."""
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


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
        reg_tokens: register tokens (Darcet et al. 2024, timm's name): extra learned tokens that give the network a
            place for global state other than background patches; attention maps then stay on the object.
        no_embed_class: position embeddings for the patch tokens only (timm's register models use this).
        global_pool: "token" (class token) or "avg" (mean of patch tokens).
        fc_norm: norm after pooling instead of before (default: timm's rule, true for "avg").
        drop_rate: dropout before the head.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth rate of the last block (linear in depth).
        patch_drop_rate: PatchDropout: share of patch tokens dropped at random from each training image (0.5 halves
            the tokens, so a step costs about half); evaluation and inference see them all. 0 = off.
        pos_embed_init: "learn" (timm's learned position embeddings) or "sincos" (fixed 2-D sin-cos embeddings, Beyer
            et al. 2022); the weights stay timm's either way.
        attn_init: "trunc_normal" (timm's) or "mimetic" (Trockman & Kolter 2023: attention starts out near the
            identity, which helps small ViTs on small data).
        patch_embed_init: "trunc_normal" (timm's) or "whiten": at the start of fit (not on resume), the patch
            projection is set from the first training batches so that each output mixes the patches' principal
            components scaled to equal variance (a data-whitened first layer, as airbench does for a CNN); still
            one linear projection of each patch, timm's weights. Refused with `pretrained`.
        attn_locality: a learned 2-D locality bias on every head's attention logits, -slope * (squared distance
            between the two patches), the slopes starting at several widths (one head global), so attention starts
            out local, as a convolution does (ALiBi / relative position biases, in 2-D). Ours alone: timm cannot
            build such a model, so `export --format timm` refuses it.
        patch_drop_end: share of training (of the time budget, or of the steps) after which PatchDropout stops, so
            the last part trains on every token, as evaluation sees them. 1.0 = dropout to the end.
        low_res_size: progressive resizing: train on each batch downsampled (bilinear, antialiased) to this side, a
            multiple of the patch size below img_size, until low_res_end; the whole image at fewer tokens (24 px
            with patch 4: 36 tokens against 64), the position embedding resampled to the smaller grid. None = off.
        low_res_end: share of training (of the time budget, or of the steps) after which training is at img_size,
            as evaluation sees it.
        optimizer: "adamw", or "muon": Muon (orthogonalised momentum) for the blocks' weight matrices and AdamW for
            the rest, at the same lr and weight_decay (Muon's step is scaled to AdamW's size).
        muon_momentum: Muon's (Nesterov) momentum.
        muon_ns_steps: Newton-Schulz iterations that orthogonalise each Muon update (fewer: a cheaper step, a
            rougher orthogonalisation).
        muon_embed: with optimizer "muon", step the patch embedding's projection with Muon too (as the
            (embed_dim, 3 x patch x patch) matrix it is) instead of AdamW.
        muon_lr_scale: with optimizer "muon", Muon's lr is lr x this (its weight decay, coupled to the lr, too);
            AdamW's stays lr. 1: one lr for both, Muon's step scaled to AdamW's size.
        muon_split_qkv: with optimizer "muon", orthogonalise each block's fused qkv update as three matrices (Q, K
            and V apart) instead of one (3 x embed_dim, embed_dim) matrix. The weights stay timm's fused qkv.
        normuon: with optimizer "muon", NorMuon (Li et al. 2025): each output neuron's row of the orthogonalised
            update divided by the root of an EMA of its mean square (beta2 0.95), then scaled back to Muon's RMS.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on weight matrices.
        betas: AdamW betas.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        min_lr_ratio: the schedule ends at lr * min_lr_ratio.
        lr_schedule: the decay after warm-up: "cosine", or "linear" (a straight line to lr * min_lr_ratio).
        lr_hold: share of training (of the time budget, or of the steps) held at the peak lr before the decay
            starts; 0 decays from the end of warm-up, 0.4 holds to 40 % and decays over the last 60 %
            (warmup-stable-decay).
        label_smoothing: label smoothing of the cross-entropy.
        mixup_alpha: timm Mixup alpha (0 = off).
        cutmix_alpha: timm CutMix alpha (0 = off).
        mixup_prob: probability of applying mixup or cutmix to a batch.
        mixup_start: share of training (of the time budget, or of the steps) from which mixup / cutmix apply.
        mixup_end: share of training after which they stop; 0 and 1 (the defaults) mix throughout.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999); validation,
            test and inference then use the averaged weights. None = off.
        time_budget_min: train for this many minutes of wall time (validation included): the lr schedule follows the
            clock instead of the step count and training stops when the time is up. Not bitwise reproducible.
        pretrained: start from these weights, spelled as timm spells them: a timm model name (e.g.
            vit_small_patch16_224.augreg_in21k_ft_in1k) or hf-hub:USER/REPO (both fetched from the Hugging Face hub,
            need network), local-dir:DIR (a timm-format folder, e.g. from `vit-app export --format timm`), or a local
            .safetensors / .pth file holding a timm-format state dict. Position embeddings are resampled to
            img_size; the head is replaced when the class count differs.
        layer_decay: layer-wise learning-rate decay (e.g. 0.75): block i trains at lr * decay^(depth - i), the
            embeddings at lr * decay^(depth + 1), the head at lr. None = off.
        compile: run the training forward through torch.compile (worth it on GPUs; the weights and checkpoints
            are those of the plain model).
        eval_tta: test-time augmentation for `validate`, `test` and `predict`: "none"; "flip" (the mean of the
            logits of each image and its mirror; twice the evaluation cost); or "flip_shift" (18 views: the image
            moved by a quarter patch, at least 1 px, in each direction on a 3 x 3 grid, each also mirrored; 18x the
            evaluation cost).
            The validation inside `fit` stays plain, so the time budget buys training. Training and checkpoints do
            not change with it.
    """

    def __init__(
        self,
        arch: str = "vit_cifar_tiny",
        num_classes: int = 10,
        img_size: int = 32,
        class_names: list[str] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        crop_pct: float | None = None,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        qkv_bias: bool | None = None,
        class_token: bool | None = None,
        reg_tokens: int | None = None,
        no_embed_class: bool | None = None,
        global_pool: Literal["token", "avg"] | None = None,
        fc_norm: bool | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_drop_rate: float = 0.0,
        pos_embed_init: Literal["learn", "sincos"] = "learn",
        attn_init: Literal["trunc_normal", "mimetic"] = "trunc_normal",
        attn_locality: bool = False,
        patch_embed_init: Literal["trunc_normal", "whiten"] = "trunc_normal",
        patch_drop_end: float = 1.0,
        low_res_size: int | None = None,
        low_res_end: float = 0.6,
        optimizer: OptimizerName = "adamw",
        muon_momentum: float = MUON_MOMENTUM,
        muon_ns_steps: int = MUON_NS_STEPS,
        muon_embed: bool = False,
        muon_lr_scale: float = 1.0,
        muon_split_qkv: bool = False,
        normuon: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        min_lr_ratio: float = 0.01,
        lr_schedule: Literal["cosine", "linear"] = "cosine",
        lr_hold: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_start: float = 0.0,
        mixup_end: float = 1.0,
        ema_decay: float | None = None,
        time_budget_min: float | None = None,
        pretrained: str | None = None,
        layer_decay: float | None = None,
        compile: bool = False,
        eval_tta: TTA = "none",
    ) -> None:
        super().__init__()
        if arch not in PRESETS:
            raise ConfigError(f"model.arch: unknown preset {arch!r}; choose one of: {', '.join(PRESETS)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        require(0.0 <= patch_drop_end <= 1.0, "model.patch_drop_end", "be in [0, 1]", patch_drop_end)
        require(0.0 <= low_res_end <= 1.0, "model.low_res_end", "be in [0, 1]", low_res_end)
        require(lr > 0, "model.lr", "be > 0", lr)
        require(0 <= muon_momentum < 1, "model.muon_momentum", "be in [0, 1)", muon_momentum)
        require(muon_ns_steps >= 1, "model.muon_ns_steps", "be 1 or more", muon_ns_steps)
        require(not muon_embed or optimizer == "muon", "model.muon_embed", "go with model.optimizer muon", muon_embed)
        require(0 < muon_lr_scale < math.inf, "model.muon_lr_scale", "be a finite number > 0", muon_lr_scale)
        require(muon_lr_scale == 1 or optimizer == "muon", "model.muon_lr_scale", "go with model.optimizer muon",
                muon_lr_scale)  # fmt: skip
        require(not muon_split_qkv or optimizer == "muon", "model.muon_split_qkv", "go with model.optimizer muon",
                muon_split_qkv)  # fmt: skip
        require(not normuon or optimizer == "muon", "model.normuon", "go with model.optimizer muon", normuon)
        require(patch_embed_init in ("trunc_normal", "whiten"), "model.patch_embed_init",
                "be 'trunc_normal' or 'whiten'", patch_embed_init)  # fmt: skip
        require(not (pretrained and patch_embed_init == "whiten"), "model.patch_embed_init",
                "stay 'trunc_normal' with model.pretrained (whitening would overwrite the pretrained patch embedding)",
                patch_embed_init)  # fmt: skip
        require(weight_decay >= 0, "model.weight_decay", "be >= 0", weight_decay)
        require(all(0 <= b < 1 for b in betas), "model.betas", "be two numbers in [0, 1)", list(betas))
        require(warmup_epochs >= 0, "model.warmup_epochs", "be >= 0", warmup_epochs)
        require(0 <= min_lr_ratio <= 1, "model.min_lr_ratio", "be in [0, 1]", min_lr_ratio)
        require(lr_schedule in LR_SCHEDULES, "model.lr_schedule", f"be one of {', '.join(LR_SCHEDULES)}", lr_schedule)
        require(0 <= lr_hold < 1, "model.lr_hold", "be in [0, 1)", lr_hold)
        require(0 <= label_smoothing < 1, "model.label_smoothing", "be in [0, 1)", label_smoothing)
        require(mixup_alpha >= 0, "model.mixup_alpha", "be >= 0 (0 = off)", mixup_alpha)
        require(cutmix_alpha >= 0, "model.cutmix_alpha", "be >= 0 (0 = off)", cutmix_alpha)
        require(0 <= mixup_prob <= 1, "model.mixup_prob", "be in [0, 1]", mixup_prob)
        require(0 <= mixup_start <= 1, "model.mixup_start", "be in [0, 1]", mixup_start)
        require(mixup_start < mixup_end <= 1, "model.mixup_end", f"be in (mixup_start={mixup_start}, 1]", mixup_end)
        require(ema_decay is None or 0 < ema_decay < 1, "model.ema_decay", "be in (0, 1), e.g. 0.999", ema_decay)
        require(time_budget_min is None or time_budget_min > 0, "model.time_budget_min", "be > 0", time_budget_min)
        require(layer_decay is None or 0 < layer_decay <= 1, "model.layer_decay", "be in (0, 1]", layer_decay)
        require(num_classes >= 1, "model.num_classes", "be 1 or more", num_classes)
        require(eval_tta in TTA_CHOICES, "model.eval_tta", f"be one of {', '.join(TTA_CHOICES)}", eval_tta)
        self.save_hyperparameters()
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if class_token is False and global_pool is None:  # no class token to pool: average the patch tokens
            global_pool = "avg"
        try:
            self.input_spec = InputSpec.create(img_size, crop_pct, mean, std)
            self.model_config: ViTConfig = preset_config(
                arch, img_size=img_size, num_classes=num_classes, patch_size=patch_size, embed_dim=embed_dim,
                depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, class_token=class_token,
                reg_tokens=reg_tokens, no_embed_class=no_embed_class, global_pool=global_pool, fc_norm=fc_norm,
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                patch_drop_rate=patch_drop_rate, pos_embed_init=pos_embed_init, attn_init=attn_init,
                attn_locality=attn_locality,
            )  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"model.{e}") from None
        p, side = self.model_config.patch_size, img_size
        require(low_res_size is None or (not isinstance(low_res_size, bool) and 0 < low_res_size < side
                                         and low_res_size % p == 0),
                "model.low_res_size", f"be a multiple of the patch size ({p}) below img_size ({side}), or null",
                low_res_size)  # fmt: skip
        self.model = VisionTransformer(self.model_config)
        if pretrained:
            load_pretrained(self.model, pretrained)
        self.temperature = 1.0  # from a calibrated checkpoint's card when evaluating or predicting with one
        self.clock = TrainingClock(time_budget_min)
        self.mixup = None
        self.mixing = True  # inside the [mixup_start, mixup_end) window of training (on_train_batch_start)
        self.low_res = low_res_size is not None  # before low_res_end: train on downsampled batches
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)  # fmt: skip
        self.model_ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.model_ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=True)
        # torch.compile wraps the forward only; kept off the module tree so state_dict keys stay the model's own
        object.__setattr__(self, "_train_forward", torch.compile(self.model) if compile else self.model)
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

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "class_names", None)
        if stage == "fit" and names and len(names) == len(self.class_names):
            self.class_names = list(names)  # e.g. read from a dataset that prepare_data downloaded after __init__
        batch = getattr(dm, "batch_size", None)
        if stage == "fit" and isinstance(batch, int):
            self._check_memory(batch, self.trainer.strategy.root_device)
        if stage == "fit" and self.hparams.patch_embed_init == "whiten" and self.trainer.ckpt_path is None:
            try:  # (a resumed run starts from its checkpoint's weights: nothing to whiten)
                whiten_patch_embed(self.model.patch_embed, self.whitening_images(dm))
            except ValueError as e:
                raise ConfigError(f"model.patch_embed_init 'whiten': {e}; use 'trunc_normal' with so few") from None
            if self.model_ema is not None:  # the average starts from the weights training starts from
                self.model_ema.module.patch_embed.load_state_dict(self.model.patch_embed.state_dict())

    def whitening_images(self, dm: Any) -> Tensor:
        """What model.patch_embed_init "whiten" is computed from: the first batches of the training loader, as a
        step sees them (normalised and augmented), up to 64 patches per input of the projection or 16 batches."""
        if dm is None or not hasattr(dm, "train_dataloader"):
            raise ConfigError("model.patch_embed_init 'whiten' needs the training images at fit time: a data module")
        k = self.model.patch_embed.proj.weight[0].numel()  # C * P * P inputs per patch
        images: list[Tensor] = []
        patches = 0
        for batch in dm.train_dataloader():
            images.append(batch[0])
            patches += len(batch[0]) * self.model.patch_embed.num_patches
            if patches >= 64 * k or len(images) >= 16:
                break
        if not images:
            raise ConfigError("model.patch_embed_init 'whiten': the training loader gave no batch")
        return torch.cat(images)

    def train_tokens(self) -> tuple[int, str]:
        """The most tokens a training step carries, and how they arise (for messages)."""
        cfg, hp = self.model_config, self.hparams
        side = hp.low_res_size if hp.low_res_size is not None and hp.low_res_end >= 1 else cfg.img_size
        h, w = (side, side) if isinstance(side, int) else side
        patches = (h // cfg.patch_size) * (w // cfg.patch_size)
        if hp.patch_drop_rate > 0 and hp.patch_drop_end >= 1:  # PatchDropout for the whole run: never every patch
            patches = max(1, int(patches * (1.0 - hp.patch_drop_rate)))
        tokens = patches + int(cfg.class_token) + cfg.reg_tokens
        return tokens, f"patch {cfg.patch_size} on {'x'.join(map(str, (h, w)))} px: {tokens:,} tokens"

    def _check_memory(self, batch: int, device: torch.device) -> None:
        """Refuse a run whose training step cannot fit in the device's free memory; warn when it may not."""
        cfg = self.model_config
        tokens, shape = self.train_tokens()
        precision = str(getattr(self.trainer, "precision", ""))
        half = precision.startswith(("bf16", "16"))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):  # the path rule's view
            kept = device.type == "cpu" and explicit_attention_faster(torch.empty(1, tokens, 1), training=True)
        step = StepShape(batch, tokens, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        warning = check_train_memory(step, free_memory_bytes(device), shape, half=half,
                                     attention_kept=kept or cfg.attn_locality)  # fmt: skip
        if warning:
            rank_zero_warn(f"vit-app: {warning}")

    # --- training ---------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        x, y = batch[0], batch[1]  # a third item lists unreadable files (the BadImageReport callback counts them)
        mix = self.mixup is not None and self.mixing
        if mix and len(y) % 2:  # timm's Mixup pairs images: a batch left odd by an unreadable
            x, y = x[:-1], y[:-1]  # file sheds its last image
        if y.numel() == 0:
            return None  # every image of this batch was unreadable: no step
        if self.low_res:  # progressive resizing: fewer tokens for the same image
            x = downsample(x, self.hparams.low_res_size)
        if mix:
            x, y_soft = self.mixup(x, y)
            logits = self._train_forward(x)
            loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self._train_forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
            self.log("train/acc1", (logits.argmax(-1) == y).float().mean(), on_step=True, on_epoch=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step}; "
                "try a lower model.lr, trainer.gradient_clip_val, or bf16-mixed instead of 16-mixed precision"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.clock.start()
        states = getattr(self, "_rng_to_restore", None)
        if states is not None:  # resuming: continue every random stream exactly where the checkpoint left it
            set_rng_states(states)
            self._rng_to_restore = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        done = self.clock.progress(self.global_step)  # share of training done, on the budget's clock or in steps
        if hp.patch_drop_rate > 0:  # PatchDropout until patch_drop_end, then every token (as in evaluation)
            self.model.patch_drop_rate = hp.patch_drop_rate if done < hp.patch_drop_end else 0.0
        if hp.low_res_size is not None:  # downsampled batches until low_res_end, then img_size (as in evaluation)
            self.low_res = done < hp.low_res_end
        if self.mixup is not None:  # mixup / cutmix only inside their window of training
            self.mixing = hp.mixup_start <= done < hp.mixup_end

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)
        if self.clock.expired():
            self.trainer.should_stop = True  # time is up: Lightning ends the run after this step

    def _schedule_steps(self) -> tuple[int, int]:
        """(total optimiser steps, steps per epoch). Asked of the DataModule when there is one: the trainer's own
        estimate builds the train loader before a checkpoint is restored, which loses its mid-epoch position."""
        t = self.trainer
        dm = getattr(t, "datamodule", None)
        if dm is None or not hasattr(dm, "train_batches_per_epoch"):
            total = int(t.estimated_stepping_batches)
            return total, max(1, math.ceil(t.num_training_batches / t.accumulate_grad_batches))
        batches = dm.train_batches_per_epoch()
        limit = t.limit_train_batches
        if limit is not None:
            batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))
        per_epoch = max(1, math.ceil(batches / t.accumulate_grad_batches))
        if t.max_steps is not None and t.max_steps > 0:
            return t.max_steps, per_epoch
        epochs = t.max_epochs if t.max_epochs is not None and t.max_epochs > 0 else 1000
        return per_epoch * epochs, per_epoch

    def build_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return build_optimizer(self.model, hp.optimizer, hp.lr, hp.weight_decay, tuple(hp.betas), hp.layer_decay,
                               hp.muon_momentum, hp.muon_ns_steps, hp.muon_embed, hp.muon_lr_scale,
                               hp.muon_split_qkv, hp.normuon)  # fmt: skip

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = self.build_optimizer()
        total, per_epoch = self._schedule_steps()
        self.clock.total_steps, self._steps_per_epoch = total, per_epoch
        warmup = min(int(hp.warmup_epochs * per_epoch), max(0, total - 1))
        min_ratio, clock, budgeted = hp.min_lr_ratio, self.clock, hp.time_budget_min is not None
        shape, hold = hp.lr_schedule, hp.lr_hold

        def schedule(step: int) -> float:
            progress = clock.time_progress() if budgeted else None  # the decay follows the clock in a budget
            return warmup_decay(step, warmup, total, min_ratio, progress, shape, hold)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation and prediction ----------------------------------------------------------------------------

    @property
    def active_tta(self) -> str:
        """The test-time augmentation evaluation uses now: `eval_tta` in validate / test / predict, "none" for the
        validation inside fit (the time budget buys training)."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        return "none" if fitting else str(self.hparams.eval_tta)

    def _eval_logits(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits, averaged over the active test-time views."""
        return tta_logits(self.eval_model, x, self.active_tta, view_shift(self.model.patch_embed.patch_size[0]))

    def _eval_step(self, batch: tuple[Tensor, ...], stage: str) -> dict[str, Tensor] | None:
        x, y = batch[0], batch[1]
        if y.numel() == 0:
            return None
        logits = self._eval_logits(x)
        acc1, acc5 = (self.val_acc1, self.val_acc5) if stage == "val" else (self.test_acc1, self.test_acc5)
        acc1.update(logits, y)
        acc5.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc1", acc1, prog_bar=True)
        self.log(f"{stage}/acc5", acc5)
        return {"pred": logits.argmax(-1), "target": y}  # for the EvalReport callback (confusion matrix)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor] | None:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor] | None:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Probabilities (with the card's temperature, over the eval_tta views, as `test` scores them) for a predict
        batch and, when a writer asked for them (`predict_maps`), rollout maps of the image itself."""
        x = batch["x"]
        out: dict[str, Any] = {"index": batch["index"], "path": batch["path"], "error": batch["error"]}
        if getattr(self, "predict_maps", False):
            from vit_app.explain.engine import explain

            ex = explain(self.eval_model, x, "rollout", temperature=self.temperature)
            out["probs"], out["maps"] = ex.probs, ex.maps
        if "probs" not in out or self.active_tta != "none":
            out["probs"] = torch.softmax(self._eval_logits(x).float() / self.temperature, dim=-1)
        return out

    # --- checkpoints ------------------------------------------------------------------------------------------

    def card(self) -> ModelCard:
        """The model card this module's checkpoints carry."""
        t = self._trainer
        dm = getattr(t, "datamodule", None)
        metrics = t.callback_metrics if t is not None else {}
        per_epoch = getattr(self, "_steps_per_epoch", 0)
        seed = os.environ.get("PL_GLOBAL_SEED", "")  # what seed_everything set
        provenance = Provenance.now(
            dataset=getattr(dm, "kind", None),
            data_root=getattr(dm, "root", None),
            seed=int(seed) if seed.lstrip("-").isdigit() else None,
            epochs=round(self.global_step / per_epoch, 2) if per_epoch else None,
            steps=int(self.global_step),
            train_minutes=round(m, 3) if (m := self.clock.minutes()) is not None else None,
            precision=str(t.precision) if t is not None else None,
            metrics={k: round(float(v), 6) for k, v in metrics.items() if k.startswith("val/")},
        )
        weights = "model_ema.module." if self.model_ema is not None else "model."
        return ModelCard(self.model_config, list(self.class_names), self.input_spec, self.temperature, provenance,
                         weights)  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CARD_KEY] = self.card().to_dict()
        checkpoint["rng_states"] = rng_states()  # Lightning keeps none; a resumed run needs them to match

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        card = read_card(checkpoint.get(CARD_KEY), "the checkpoint")
        diff = card.model.differences(self.model_config)
        if diff:
            raise CheckpointError(
                "the checkpoint is from a different model than the config builds (checkpoint vs config: "
                + "; ".join(diff)
                + "); use the config it was trained with, or leave the model out of it"
            )
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if not fitting:  # evaluating or predicting a trained model: its card says what its outputs mean
            self.class_names, self.temperature = list(card.class_names), card.temperature
        self._rng_to_restore = checkpoint.get("rng_states")
