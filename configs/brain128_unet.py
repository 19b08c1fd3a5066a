"""The paper's set-up with a multi-resolution U-Net (~20x fewer FLOPs than the depth-32 network).

    python -m vdm_mri.train --config=configs/brain128_unet.py --workdir=runs/brain128_unet
"""

import pathlib

import ml_collections

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128.py"))  # the paper
  config.model = ml_collections.ConfigDict()
  config.model.kind = "unet"  # multi-resolution U-Net (vdm_mri.unet.UNet)
  config.model.ch = 64  # channels at full resolution
  config.model.ch_mult = (1, 2, 2, 4)  # channel multiplier per level: 128, 64, 32, 16 px
  config.model.num_res_blocks = 2  # ResNet blocks per level (one more on the way up)
  config.model.attn_resolutions = (16,)  # self-attention at these resolutions (min(H, W))
  config.model.num_heads = 1  # attention heads
  config.model.dropout = 0.1  # dropout rate inside the ResNet blocks
  config.model.with_fourier_features = True  # sin/cos(2^6·2π z), (2^7·2π z) as extra inputs
  config.model.remat = False  # recompute ResNet blocks in the backward pass
  config.model.dtype = "float32"  # compute dtype (parameters stay float32); or "bfloat16"
  config.training.batch_size = 64  # global batch over all devices
  return config
