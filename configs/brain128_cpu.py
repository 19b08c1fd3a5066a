"""The shipped prior's recipe: a VDM trained on a 2-core CPU, on both shared data sets.

    python -m vdm_mri.train --config=configs/brain128_cpu.py --workdir=runs/cpu_prior

The paper's VDM (the same bound, T = 1000, the same encoder and sampler) with a multi-resolution
U-Net sized for CPU throughput, a fixed linear schedule, and an EMA whose half-life grows with
the images seen. It trains on the skull-stripped and the skull-on sets mixed 65:35 and keeps its
best EMA parameters by guided super-resolution on the validation subjects (workdir/best/).
The README's model card gives the measurements behind each choice.
"""

import pathlib

import ml_collections

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128.py"))  # the paper
  config.data.weights = "0.65,0.35"  # brain_t1w (stripped), brain_t1w_skull (real-looking)
  config.schedule = ml_collections.ConfigDict()
  config.schedule.kind = "fixed_linear"  # γ from γ_min to γ_max, linear in t
  config.schedule.gamma_min = -13.3  # γ(0) = -log SNR at t=0 (the paper's)
  config.schedule.gamma_max = 5.0  # γ(1) = -log SNR at t=1
  config.model = ml_collections.ConfigDict()
  config.model.kind = "unet"  # multi-resolution U-Net (vdm_mri.unet.UNet)
  config.model.ch = 16  # channels at full resolution (128 px)
  config.model.ch_mult = (1, 2, 4, 8)  # 16, 32, 64, 128 channels at 128, 64, 32, 16 px
  config.model.num_res_blocks = 1  # ResNet blocks per level (one more on the way up)
  config.model.extra_blocks = ()  # per level: identity-initialised blocks after each block
  config.model.attn_resolutions = (16,)  # self-attention at 16x16 only (256 positions)
  config.model.num_heads = 1  # attention heads
  config.model.dropout = 0.0  # the prior underfits on a CPU budget
  config.model.with_fourier_features = True  # sin/cos(2^6·2π z), (2^7·2π z) as extra inputs
  config.model.coord_channels = False  # no patch training in this recipe
  config.model.aug_dim = 0  # no augmentation labels (data.augment_prob = 0)
  config.model.remat = False  # memory is not the limit on a CPU
  config.model.dtype = "float32"  # XLA:CPU runs bfloat16 slower than float32
  config.optimizer.learning_rate = 5e-4  # AdamW peak learning rate
  config.optimizer.warmup_steps = 200  # linear warm-up
  config.optimizer.ema_halflife_images = 1e6  # cap; the ramp-up sets the half-life below it
  config.optimizer.ema_rampup_ratio = 0.1  # EMA half-life = 10 % of the images seen
  config.training.batch_size = 8  # global batch
  config.training.num_steps = 1_000_000  # resumed across sessions; stopped by SIGTERM
  config.training.log_every = 50
  config.training.eval_every = 2500
  config.training.eval_batches = 4
  config.training.sample_every = 10000
  config.training.checkpoint_every = 250  # ~4 min of CPU time
  config.training.keep_checkpoints = 2
  config.sr_eval.every = 1500  # 12k images, ~40 min of this CPU
  config.sr_eval.steps = 25  # the shipped sampling steps (README: curves)
  config.sr_eval.num_samples = 4  # K of the selection (the shipped default may be larger)
  config.sampling.steps = 10  # shipped default (README: fewer steps gave a better posterior mean)
  config.sampling.num_samples = 16  # posterior samples averaged (each doubling: +0.1-0.4 dB)
  return config
