"""Exported priors: EMA parameters in one file that loads without pickle, verified by SHA-256.

A *params dir* holds three files:

  ema_params.msgpack  the EMA parameters {"score": …, "gamma": …} (flax.serialization msgpack)
  config.json         the training config (what `model.from_config` rebuilds the model from)
  manifest.json       {"format": FORMAT, "files": {name: {"sha256", "bytes"}}, "step", …}

A *state dir* (a resumable training state without the optimiser moments) is a params dir with
one more file, params.msgpack (the raw parameters), and the data position in its manifest
("data_seed", "data_state"): `python -m vdm_mri.train --init_from=STATE_DIR` continues that run.

`export` writes one (training keeps its best parameters by SR validation in workdir/best/, and
the shipped prior, `DEFAULT`, is such a dir copied into the package); `load` verifies every
listed file's size and SHA-256 before it reads anything, and checks the parameter shapes
against the config's model. A changed, truncated or missing file raises `PretrainedError` with
a one-line message (the command-line tools exit with code 2).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

import flax
import jax
import ml_collections
import numpy as np

from vdm_mri import atomic, unet

FORMAT = "vdm_mri.params/1"
PARAMS_FILE, CONFIG_FILE, MANIFEST_FILE = "ema_params.msgpack", "config.json", "manifest.json"
RAW_PARAMS_FILE = "params.msgpack"  # state dirs only

DEFAULT = pathlib.Path(__file__).parent / "brain128_cpu"
"""The shipped prior (configs/brain128_cpu.py trained on the CPU; model card in the README)."""


class PretrainedError(ValueError):
  """A params dir that is missing, changed or does not fit its config (one-line message)."""


def is_params_dir(path) -> bool:
  return (pathlib.Path(path) / MANIFEST_FILE).is_file()


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _msgpack(params) -> bytes:
  host = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  return flax.serialization.msgpack_serialize(host)


def export(directory, params, config, *, raw_params=None, **info) -> pathlib.Path:
  """Write `params` (host or device arrays) and `config` as a params dir; `info` (step,
  images seen, metrics …) goes into the manifest; `raw_params` makes it a state dir (module
  doc). Files are renamed into place one by one and the manifest last, so a reader never sees
  new files under an old manifest's checksums."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  config_json = (config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
                 else json.dumps(config, indent=2))
  payloads = {PARAMS_FILE: _msgpack(params), CONFIG_FILE: (config_json + "\n").encode()}
  if raw_params is not None:
    payloads[RAW_PARAMS_FILE] = _msgpack(raw_params)
  files = {}
  for name, payload in payloads.items():
    atomic.write_bytes(directory / name, payload)
    files[name] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
  manifest = {"format": FORMAT, "files": files, **info}
  atomic.write_bytes(directory / MANIFEST_FILE,
                (json.dumps(manifest, indent=2, default=float) + "\n").encode())
  return directory


def read_manifest(directory) -> dict:
  path = pathlib.Path(directory) / MANIFEST_FILE
  try:
    manifest = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise PretrainedError(f"{path}: cannot read the manifest ({e})") from e
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise PretrainedError(f"{path}: not a {FORMAT} manifest")
  return manifest


def verify(directory) -> dict:
  """Check every file listed in the manifest (size, then SHA-256); returns the manifest."""
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory)
  for name in dict.fromkeys((PARAMS_FILE, CONFIG_FILE, *manifest.get("files", {}))):
    entry = manifest["files"].get(name)
    path = directory / name
    if entry is None:
      raise PretrainedError(f"{directory / MANIFEST_FILE}: lists no {name}")
    if not path.is_file():
      raise PretrainedError(f"{path}: missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
      raise PretrainedError(f"{path}: {size} bytes, the manifest says {entry['bytes']} "
                            "(truncated or replaced)")
    if sha256(path) != entry["sha256"]:
      raise PretrainedError(f"{path}: SHA-256 differs from the manifest (the file was changed)")
  return manifest


def tuples_from_json(value):
  """JSON lists -> tuples (Flax module fields must be hashable)."""
  if isinstance(value, dict):
    return {k: tuples_from_json(v) for k, v in value.items()}
  return tuple(tuples_from_json(v) for v in value) if isinstance(value, list) else value


def load_config(directory) -> ml_collections.ConfigDict:
  """The verified config of a params dir."""
  verify(directory)
  text = (pathlib.Path(directory) / CONFIG_FILE).read_text()
  return ml_collections.ConfigDict(tuples_from_json(json.loads(text)))


STEM_KERNEL = "['score']['Conv_0']['kernel']"
"""Key path of the score network's first convolution, whose input channels end with the
coordinate channels of a network that has them (unet._stem)."""


def _add_input_channels(params, expected: dict):
  """A stem kernel [3, 3, C, ch] widened with zero weights to the model's C' > C inputs: the
  network then computes exactly what it did, and learns to use the new (coordinate) inputs."""
  score = params.get("score", {})
  conv = score.get("Conv_0", {}) if isinstance(score, dict) else {}
  kernel = conv.get("kernel") if isinstance(conv, dict) else None
  want = expected.get(STEM_KERNEL)
  if kernel is None or want is None or kernel.ndim != 4 or len(want) != 4:
    return params
  if kernel.shape[:2] + kernel.shape[3:] != want[:2] + want[3:] or kernel.shape[2] >= want[2]:
    return params
  pad = np.zeros((*kernel.shape[:2], want[2] - kernel.shape[2], kernel.shape[3]), kernel.dtype)
  conv = {**conv, "kernel": np.concatenate([kernel, pad], axis=2)}
  return {**params, "score": {**score, "Conv_0": conv}}


# modules a warm start may add: extra blocks, the augmentation-label embedding
_GROWN_MODULE = re.compile(re.escape(unet.EXTRA_TAG) + r"\d+$|^" + re.escape(unet.AUG_MODULE)
                           + "$")


def _add_grown_modules(params, fill):
  """`params` with the modules they lack taken from the parameter tree `fill` (a fresh
  initialisation of the model), where every such module is one of `UNet.extra_blocks` (their
  last convolution starts at zero) or the augmentation-label embedding (zero, and unused at
  zero labels), so the grown network computes exactly what `params` computed (a warm start that
  adds capacity or augmentation). Other missing parameters are left missing, for
  the shape check to name."""
  flat = flax.traverse_util.flatten_dict(params, keep_empty_nodes=True)  # a fixed γ has {}
  for path, value in flax.traverse_util.flatten_dict(fill).items():
    if path not in flat and any(_GROWN_MODULE.search(str(k)) for k in path):
      flat[path] = np.asarray(value)
  return flax.traverse_util.unflatten_dict(flat)


def is_state_dir(path) -> bool:
  """A params dir that also holds raw parameters (module doc)."""
  return is_params_dir(path) and RAW_PARAMS_FILE in read_manifest(path).get("files", {})


def load_params(directory, model=None, *, add_input_channels: bool = False,
                raw: bool = False, grow_from=None):
  """The verified EMA parameters of a params dir (`raw`: the raw parameters of a state dir),
  as numpy arrays; with a `model.VDM`, checked to have exactly its parameter tree and shapes.
  `add_input_channels`: a model whose network has more input channels (coordinate channels
  for patch training) takes the file's weights with zero weights for the new inputs (a warm
  start). `grow_from`: a fresh parameter tree of `model` that supplies the extra blocks
  (`UNet.extra_blocks`) or the augmentation-label embedding (`UNet.aug_dim`) the file has none
  of (a warm start of a deeper or augmented network)."""
  directory = pathlib.Path(directory)
  verify(directory)
  name = RAW_PARAMS_FILE if raw else PARAMS_FILE
  if raw and not is_state_dir(directory):
    raise PretrainedError(f"{directory}: not a state dir (no {RAW_PARAMS_FILE})")
  try:
    params = flax.serialization.msgpack_restore((directory / name).read_bytes())
  except Exception as e:  # msgpack raises several types for malformed payloads
    raise PretrainedError(f"{directory / name}: not readable ({type(e).__name__})") from e
  if model is not None:
    expected = param_shapes(model.abstract_params())
    if add_input_channels:
      params = _add_input_channels(params, expected)
    if grow_from is not None:
      params = _add_grown_modules(params, grow_from)
    found = param_shapes(params)
    for path in sorted(set(expected) | set(found)):
      if expected.get(path) != found.get(path):
        raise PretrainedError(f"{directory}: parameters do not match the config at {path}: "
                              f"model {expected.get(path)} vs file {found.get(path)}")
  return params


def param_shapes(tree) -> dict:
  """{key path: shape} of a parameter tree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in flat}
