"""timm-format weights into our VisionTransformer: from a local file or timm's hub. Nothing here knows of training."""

from __future__ import annotations

import os

import torch

from vit_app.errors import CheckpointError, ConfigError
from vit_app.model import VisionTransformer

STATE_DICT_WRAPPERS = ("state_dict", "model", "module")  # common keys around a state dict in .pth files
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")  # a name ending so is a file, not a hub name


def read_timm_weights(source: str) -> dict[str, torch.Tensor]:
    """A timm-format state dict, named as timm names it: a local .safetensors / .pth file, `local-dir:DIR` (a folder
    with model.safetensors, as `vit-app export --format timm` writes and the Hub holds), `hf-hub:USER/REPO`, or a
    timm model name (e.g. vit_small_patch16_224.augreg_in21k) from the hub."""
    path = os.path.expanduser(source)
    if os.path.isdir(path) and not source.startswith("local-dir:"):
        source = f"local-dir:{path}"  # a folder is what local-dir: names
    if source.startswith("local-dir:"):
        from vit_app.hub import read_timm_folder

        folder = os.path.expanduser(source.removeprefix("local-dir:"))
        if not os.path.isdir(folder):
            raise ConfigError(f"model.pretrained: {source}: no such folder")
        return read_timm_folder(folder)[1]
    if os.path.isfile(path):
        source = path
        if source.endswith(".safetensors"):
            from vit_app.card import load_safetensors

            return load_safetensors(source)[0]
        from vit_app.checkpoint import safe_load

        state = safe_load(source)
        for key in STATE_DICT_WRAPPERS:
            if key in state and isinstance(state[key], dict):
                state = state[key]
        return state
    if source.startswith(("/", "./", "../", "~")) or source.lower().endswith(WEIGHT_SUFFIXES):
        raise ConfigError(f"model.pretrained: file '{path}' does not exist")  # a path, not a hub name
    if source.startswith("hf-hub:") or "/" in source or "." in source or source.startswith("vit_"):
        import logging

        import timm

        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its retry warnings would precede our one line
        try:
            return timm.create_model(source, pretrained=True).state_dict()
        except Exception as e:  # no network, unknown name, hub errors
            raise ConfigError(f"model.pretrained: cannot fetch {source!r} from the hub ({e})") from None
        finally:
            hub_log.setLevel(level)
    raise ConfigError(f"model.pretrained: {source!r} is neither a file nor a timm model name")


def load_pretrained(model: VisionTransformer, source: str) -> None:
    """Load timm-format weights into `model`: the position embedding is resampled to the model's grid, and a head
    for another class count is left freshly initialised. Weights of another architecture are refused by name."""
    state = read_timm_weights(source)
    ours = model.state_dict()
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    if any(v.shape != ours[k].shape for k, v in head.items() if k in ours):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # another class count: new head
    unexpected = [k for k in state if k not in ours]
    wrong = [k for k, v in state.items() if k in ours and k != "pos_embed" and v.shape != ours[k].shape]
    if unexpected or wrong:
        detail = ", ".join((unexpected + wrong)[:4])
        raise CheckpointError(
            f"model.pretrained: {source} holds weights of a different model ({detail}); match model.arch "
            "(embed_dim, depth, num_heads, patch_size) to the weights"
        )
    # a new head may start fresh, and so do locality slopes (attn_locality), which timm weights never hold
    missing = [k for k in ours if k not in state and not k.startswith("head.") and not k.endswith("attn.locality")]
    if missing:
        raise CheckpointError(f"model.pretrained: {source} lacks {', '.join(missing[:4])}")
    model.load_state_dict(state, strict=False)
