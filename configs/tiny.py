"""A tiny model for CPU tests and smoke runs: trains a few steps in seconds.

    python -m vdm_mri.train --config=configs/tiny.py --workdir=runs/tiny
"""

import pathlib

import ml_collections

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128.py"))  # the paper
  config.schedule.hidden = 64  # small monotone network
  config.model = ml_collections.ConfigDict()
  config.model.kind = "unet"  # multi-resolution U-Net
  config.model.ch = 16  # channels at full resolution
  config.model.ch_mult = (1, 2, 2)  # 128, 64, 32 px
  config.model.num_res_blocks = 1  # ResNet blocks per level
  config.model.attn_resolutions = ()  # no attention except the middle block's (32x32)
  config.model.num_heads = 1  # attention heads
  config.model.dropout = 0.0  # no dropout: tiny models underfit anyway
  config.model.with_fourier_features = True  # as the real model
  config.model.remat = False  # nothing to save
  config.model.dtype = "float32"  # compute dtype
  config.optimizer.learning_rate = 1e-3  # larger steps for a short run
  config.optimizer.warmup_steps = 10  # short warm-up
  config.optimizer.ema_rate = 0.99  # EMA that moves within a short run
  config.training.batch_size = 8  # global batch
  config.training.num_steps = 200  # a short run
  config.training.log_every = 10
  config.training.eval_every = 100
  config.training.eval_batches = 2
  config.training.sample_every = 200
  config.training.checkpoint_every = 50
  config.sr_eval.every = 0  # no SR validation (a smoke run)
  config.sampling.steps = 50  # fast smoke sampling
  config.sampling.num_samples = 2
  return config
