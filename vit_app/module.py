"""The LightningModule: steps, metrics, optimiser and schedule. The model itself knows nothing of Lightning."""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from vit_app.data.transforms import eval_spec
from vit_app.errors import CheckpointError, ConfigError
from vit_app.model import PRESETS, VisionTransformer, preset_config
from vit_app.optim import MuonAdamW, is_muon_param

CHECKPOINT_KEY = "vit_app"  # the checkpoint entry that holds everything inference needs
CHECKPOINT_FORMAT = 1


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, progress: float | None = None
) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over `warmup_steps`, then cosine down to `min_ratio` at the end.
    `progress` in [0, 1], when given, replaces the step-based position in the cosine (time-budgeted runs)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = progress if progress is not None else (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, t))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def rng_states() -> dict[str, Any]:
    """Every random stream training draws on (torch CPU and CUDA, numpy, python), as weights_only-safe types."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(states["python"][:1]) + (tuple(states["python"][1]),) + tuple(states["python"][2:]))


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for blocks.i, depth + 1 for the final norm and head (layer-wise LR decay)."""
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    lr: float = 1e-3,
    layer_decay: float | None = None,
    muon: bool = False,
) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on norms, biases, position and class embeddings; with
    `layer_decay`, one group per (layer, decay) whose lr is lr * layer_decay^(depth + 1 - layer). With `muon`, the
    blocks' weight matrices go to groups of their own marked muon=True (see vit_app.optim.MuonAdamW)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        layer = layer_id(name, depth) if layer_decay is not None else depth + 1
        to_muon = muon and is_muon_param(name, p)
        g = groups.setdefault(
            (layer, no_decay, to_muon), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay}
        )
        if to_muon:
            g["muon"] = True
        if layer_decay is not None:
            g["lr"] = lr * layer_decay ** (depth + 1 - layer)
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def load_pretrained(model: VisionTransformer, source: str) -> None:
    """Load timm-format weights from a local .safetensors/.pth file or a timm hub name into `model`; the position
    embedding is resampled to the model's grid and a head of another class count is left freshly initialised."""
    if os.path.isfile(source):
        if source.endswith(".safetensors"):
            from vit_app.export import load_safetensors

            state, _ = load_safetensors(source)
        else:
            from vit_app.checkpoint import safe_load

            state = safe_load(source)
            for key in ("state_dict", "model", "module"):  # common wrappers around a state dict
                if key in state and isinstance(state[key], dict):
                    state = state[key]
    elif "/" in source or "." in source or source.startswith("vit_"):
        import timm

        try:
            state = timm.create_model(source, pretrained=True).state_dict()
        except Exception as e:  # no network, unknown name, hub errors
            raise ConfigError(f"model.pretrained: cannot fetch {source!r} from the hub ({e})") from None
    else:
        raise ConfigError(f"model.pretrained: {source!r} is neither a file nor a timm model name")
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    if any(v.shape != model.state_dict()[k].shape for k, v in head.items() if k in model.state_dict()):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # another class count: new head
    ours = model.state_dict()
    unexpected = [k for k in state if k not in ours]
    wrong = [k for k, v in state.items() if k in ours and k != "pos_embed" and v.shape != ours[k].shape]
    if unexpected or wrong:
        detail = ", ".join((unexpected + wrong)[:4])
        raise CheckpointError(
            f"model.pretrained: {source} holds weights of a different model ({detail}); match model.arch "
            "(embed_dim, depth, num_heads, patch_size) to the weights"
        )
    missing = [k for k in ours if k not in state and not k.startswith("head.")]
    if missing:
        raise CheckpointError(f"model.pretrained: {source} lacks {', '.join(missing[:4])}")
    model.load_state_dict(state, strict=False)


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
        patch_drop_rate: PatchDropout: share of patch tokens dropped at random from each training image (0.5 halves
            the tokens, so a step costs about half); evaluation and inference see them all. 0 = off.
        patch_drop_end: share of training (of the time budget, or of the steps) after which PatchDropout stops, so
            the last part trains on every token, as evaluation sees them. 1.0 = dropout to the end.
        optimizer: "adamw", or "muon": Muon (orthogonalised momentum) for the blocks' weight matrices and AdamW for
            the rest, at the same lr and weight_decay (Muon's step is scaled to AdamW's size).
        lr: peak learning rate.
        weight_decay: decoupled weight decay on weight matrices.
        betas: AdamW betas.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        min_lr_ratio: the cosine schedule ends at lr * min_lr_ratio.
        label_smoothing: label smoothing of the cross-entropy.
        mixup_alpha: timm Mixup alpha (0 = off).
        cutmix_alpha: timm CutMix alpha (0 = off).
        mixup_prob: probability of applying mixup or cutmix to a batch.
        ema_decay: keep an exponential moving average of the weights with this decay (e.g. 0.999); validation,
            test and inference then use the averaged weights. None = off.
        time_budget_min: train for this many minutes of wall time (validation included): the cosine follows the
            clock instead of the step count and training stops when the time is up. Not bitwise reproducible.
        pretrained: start from these weights: a timm model name (e.g. vit_small_patch16_224.augreg_in21k_ft_in1k,
            fetched from the Hugging Face hub, needs network) or a local .safetensors / .pth file holding a
            timm-format state dict. Position embeddings are resampled to img_size; the head is replaced when the
            class count differs.
        layer_decay: layer-wise learning-rate decay (e.g. 0.75): block i trains at lr * decay^(depth - i), the
            embeddings at lr * decay^(depth + 1), the head at lr. None = off.
        compile: run the training forward through torch.compile (worth it on GPUs; the weights and checkpoints
            are those of the plain model).
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
        patch_drop_rate: float = 0.0,
        patch_drop_end: float = 1.0,
        optimizer: Literal["adamw", "muon"] = "adamw",
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
        time_budget_min: float | None = None,
        pretrained: str | None = None,
        layer_decay: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if arch not in PRESETS:
            raise ConfigError(f"model.arch: unknown preset {arch!r}; choose one of: {', '.join(PRESETS)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        if not 0.0 <= patch_drop_rate < 1.0:
            raise ConfigError(f"model.patch_drop_rate must be in [0, 1), got {patch_drop_rate}")
        if not 0.0 <= patch_drop_end <= 1.0:
            raise ConfigError(f"model.patch_drop_end must be in [0, 1], got {patch_drop_end}")
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
            patch_drop_rate=patch_drop_rate,
        )
        if class_token is False and global_pool is None:  # no class token to pool: average the patch tokens
            self.model_config["global_pool"] = "avg"
        self.model = VisionTransformer(**self.model_config)
        if pretrained:
            load_pretrained(self.model, pretrained)
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

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor | None:
        x, y = batch[0], batch[1]  # a third item lists unreadable files (the BadImageReport callback counts them)
        if self.mixup is not None and len(y) % 2:  # timm's Mixup pairs images: a batch left odd by an unreadable
            x, y = x[:-1], y[:-1]  # file sheds its last image
        if y.numel() == 0:
            return None  # every image of this batch was unreadable: no step
        if self.mixup is not None:
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

    def _time_progress(self) -> float:
        """Share of the time budget spent (0 before training starts)."""
        start = getattr(self, "_train_start", None)
        if start is None or self.hparams.time_budget_min is None:
            return 0.0
        return (time.monotonic() - start) / (60.0 * self.hparams.time_budget_min)

    def _train_progress(self) -> float:
        """Share of training done: of the time budget when there is one, else of the scheduled steps."""
        if self.hparams.time_budget_min is not None:
            return self._time_progress()
        total = getattr(self, "_total_steps", 0)
        return self.global_step / total if total else 0.0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        hp = self.hparams
        if hp.patch_drop_rate > 0:  # PatchDropout until patch_drop_end, then every token (as in evaluation)
            self.model.patch_drop_rate = hp.patch_drop_rate if self._train_progress() < hp.patch_drop_end else 0.0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)
        if self.hparams.time_budget_min is not None and self._time_progress() >= 1.0:
            self.trainer.should_stop = True  # time is up: Lightning ends the run after this step

    def _eval_step(self, batch: tuple[Tensor, ...], stage: str) -> dict[str, Tensor] | None:
        x, y = batch[0], batch[1]
        if y.numel() == 0:
            return None
        logits = self.eval_model(x).float()
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
        """Probabilities for a predict batch and, when a writer asked for them (`predict_maps`), rollout maps."""
        x = batch["x"]
        out: dict[str, Any] = {"index": batch["index"], "path": batch["path"], "error": batch["error"]}
        if getattr(self, "predict_maps", False):
            from vit_app.explain.engine import explain

            ex = explain(self.eval_model, x, "rollout")
            out["probs"], out["maps"] = ex.probs, ex.maps
        else:
            out["probs"] = torch.softmax(self.eval_model(x).float(), dim=-1)
        return out

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
        """The configured optimiser over the model's parameter groups (no schedule: that needs the trainer)."""
        hp = self.hparams
        muon = hp.optimizer == "muon"
        groups = param_groups(self.model, hp.weight_decay, hp.lr, hp.layer_decay, muon=muon)
        betas = tuple(hp.betas)
        return MuonAdamW(groups, hp.lr, betas) if muon else torch.optim.AdamW(groups, lr=hp.lr, betas=betas)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = self.build_optimizer()
        total, per_epoch = self._schedule_steps()
        self._total_steps = total
        warmup = min(int(hp.warmup_epochs * per_epoch), max(0, total - 1))
        min_ratio = hp.min_lr_ratio

        def schedule(step: int) -> float:
            return warmup_cosine(step, warmup, total, min_ratio)

        def timed_schedule(step: int) -> float:
            return warmup_cosine(step, warmup, total, min_ratio, progress=self._time_progress())

        budgeted = hp.time_budget_min is not None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, timed_schedule if budgeted else schedule)
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
        checkpoint["rng_states"] = rng_states()  # Lightning keeps none; a resumed run needs them to match

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {}).get("model_config")
        if saved is not None:
            arch = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes",
                    "class_token", "qkv_bias")  # fmt: skip
            diff = [f"{k}: {saved.get(k)} vs {self.model_config.get(k)}" for k in arch
                    if saved.get(k) != self.model_config.get(k)]  # fmt: skip
            if diff:
                raise CheckpointError(
                    "the checkpoint is from a different model than the config builds (checkpoint vs config: "
                    + "; ".join(diff)
                    + "); use the config it was trained with"
                )
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        self._train_start = time.monotonic()
        states = getattr(self, "_rng_to_restore", None)
        if states is not None:  # resuming: continue every random stream exactly where the checkpoint left it
            set_rng_states(states)
            self._rng_to_restore = None
