"""ScoreNet weights to and from the interchange format (safetensors, PyTorch state_dict names).

A file is either a bare state_dict (the fixture, train_ref.py's output, `scoreflow` exports) or a
scoreflow training checkpoint, which holds the raw weights under the bare names and, besides them,
the EMA and Adam moments under prefixes (train.ema., train.adam_m., train.adam_v.). The model's
shape is read from the tensors (channels from the conv weights, embed_dim from embed.W) and the
SDE from the metadata: scoreflow's "sde" JSON, else the fixture's sigma_min / sigma_max keys.
"""
import json

import numpy as np
import torch

from safetensors_io import load_safetensors
from scorenet import ScoreNet
from sde import SIGMA_MAX, SIGMA_MIN, VESDE

EMA_PREFIX = "train.ema."


def state_dict_to_numpy(model):
    """{name: float32 array} in PyTorch layouts, ready for save_safetensors."""
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def sde_from_metadata(path, meta):
    if "sde" in meta:
        sde = json.loads(meta["sde"])
        if sde.get("name", "ve") != "ve":
            raise ValueError(f"{path}: SDE '{sde.get('name')}' in the metadata; the reference has the VE SDE only")
        return VESDE(sde.get("sigmaMin", SIGMA_MIN), sde.get("sigmaMax", SIGMA_MAX))
    return VESDE(float(meta.get("sigma_min", SIGMA_MIN)), float(meta.get("sigma_max", SIGMA_MAX)))


def model_from_tensors(path, tensors, meta, prefix=""):
    """A ScoreNet holding the tensors named prefix + <state_dict name>; others in the file are ignored."""
    def shape(name):
        if prefix + name not in tensors:
            raise ValueError(f"{path}: tensor '{prefix + name}' is missing; is this a ScoreNet checkpoint?")
        return tensors[prefix + name].shape

    channels = [shape(f"conv{i}.weight")[0] for i in range(1, 5)]
    model = ScoreNet(channels=channels, embed_dim=2 * shape("embed.W")[0], sde=sde_from_metadata(path, meta))
    wanted = model.state_dict()
    state = {}
    for name, ref in wanted.items():
        a = tensors.get(prefix + name)
        if a is None or tuple(a.shape) != tuple(ref.shape):
            got = "missing" if a is None else f"shape {list(a.shape)}"
            raise ValueError(f"{path}: tensor '{prefix + name}' is {got}, ScoreNet needs {list(ref.shape)}")
        state[name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    model.load_state_dict(state)
    return model.eval()


def load_model(path, ema=False):
    """The ScoreNet in a file, in eval mode: its raw weights, or with ema=True a checkpoint's EMA."""
    tensors, meta = load_safetensors(path)
    return model_from_tensors(path, tensors, meta, EMA_PREFIX if ema else "")
