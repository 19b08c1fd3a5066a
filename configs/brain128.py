"""The paper's model: VDM with the "U-Net of depth 32" on 128x128 brain MR slices.

    python -m vdm_mri.train --config=configs/brain128.py --workdir=runs/brain128
Override any field on the command line, e.g. --config.training.batch_size=8.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed of parameters, data order, dropout and loss noise

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # slices (.npz) or a prepared TFDS dir; "" = ../shared/data if present
  config.data.bits = 12  # intensities are k/(2^bits - 1); the shared data are 12-bit
  config.data.image_size = 128  # H = W of the training slices
  config.data.channels = 1  # magnitude images
  # Mixing weights of the data sets in config.data.path (comma-separated, one per set; "" = in
  # proportion to their sizes). ../shared/data holds brain_t1w (skull-stripped) and
  # brain_t1w_skull (with skull), in that order.
  config.data.weights = ""
  config.data.flip = False  # random left-right flips of the training slices
  # Non-leaking affine augmentation (EDM): this fraction of the training slices rotated (±
  # degrees), scaled (2^±log2_scale) and shifted (± shift of the size), the network told how
  # through model.aug_dim = 4 labels that sampling sets to zero; 0 = off
  config.data.augment_prob = 0.0
  config.data.augment_degrees = 10.0
  config.data.augment_log2_scale = 0.15
  config.data.augment_shift = 0.0625
  # Patch training (Patch Diffusion): random crops of these sizes per step (comma-separated,
  # e.g. "32,64,128" with "0.2,0.3,0.5"; "" = whole images); needs model.coord_channels
  config.data.patch_sizes = ""
  config.data.patch_probs = ""

  config.schedule = ml_collections.ConfigDict()
  config.schedule.kind = "learned_nn"  # fixed_linear | learned_scalar | learned_nn (monotone net)
  config.schedule.gamma_min = -13.3  # γ(0) = -log SNR at t=0
  config.schedule.gamma_max = 5.0  # γ(1) = -log SNR at t=1
  config.schedule.hidden = 1024  # width of the monotone network's hidden layer
  config.schedule.pin_endpoints = True  # keep γ(0), γ(1) exactly at γ_min, γ_max (schedule.py)

  config.model = ml_collections.ConfigDict()
  config.model.kind = "score_unet"  # score_unet (no down-sampling, the paper) | unet (multi-res)
  config.model.n_layer = 32  # ResNet blocks down (n_layer + 1 up): "depth 32"
  config.model.n_embd = 128  # channels of every block
  config.model.dropout = 0.1  # dropout rate inside the ResNet blocks
  config.model.with_fourier_features = True  # sin/cos(2^6·2π z), (2^7·2π z) as extra inputs
  config.model.with_attention = False  # attention after every block (the middle always has one)
  config.model.coord_channels = False  # pixel coordinates as two extra inputs (patch training)
  config.model.aug_dim = 0  # augmentation labels as conditioning (data.augment_prob); 0: none
  config.model.remat = True  # recompute ResNet blocks in the backward pass (fits 80 GB)
  config.model.dtype = "float32"  # compute dtype (parameters stay float32); or "bfloat16"

  config.loss = ml_collections.ConfigDict()
  config.loss.num_steps = 1000  # T of the discrete-time diffusion loss L_T; 0 = continuous L_∞
  config.loss.antithetic = True  # antithetic (low-discrepancy) sampling of t over the batch
  # Training objective: "elbo" (the bound, the paper) or "sigmoid" (diffusion term weighted by
  # sigmoid(γ + sigmoid_bias), noise levels importance-sampled; vdm.Weighting). Evaluation
  # always reports the bound.
  config.loss.weighting = "elbo"
  config.loss.sigmoid_bias = 4.0  # w = 1/2 at γ = -bias

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 2e-4  # AdamW peak learning rate
  config.optimizer.warmup_steps = 1000  # linear warm-up from 0 to the peak
  config.optimizer.decay_steps = 0  # > 0: linear cool-down to 0 after warm-up (0: constant)
  config.optimizer.hold_steps = 0  # with decay_steps > 0: steps at the peak before the cool-down
  config.optimizer.b1 = 0.9  # Adam β1
  config.optimizer.b2 = 0.99  # Adam β2
  config.optimizer.eps = 1e-8  # Adam ε
  config.optimizer.weight_decay = 0.01  # decoupled decay; not on norm scales/biases/schedule
  config.optimizer.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
  config.optimizer.ema_rate = 0.9999  # EMA of the parameters used for evaluation and sampling
  # > 0: instead of ema_rate, an EMA whose half-life (in images) grows as ema_rampup_ratio times
  # the images seen, up to this cap (EDM, Karras et al. 2022; optim.make_ema_rate)
  config.optimizer.ema_halflife_images = 0.0
  config.optimizer.ema_rampup_ratio = 0.05

  config.training = ml_collections.ConfigDict()
  # Global batch over all devices. Estimate for one 80 GB GPU with remat, float32: ~1.3 GiB of
  # saved block inputs plus ~3-4 GiB for the middle attention's 16384x16384 matrices per image
  # (not yet measured on a GPU: XLA's CPU memory analysis ignores remat).
  config.training.batch_size = 8
  config.training.num_steps = 1_000_000  # total optimisation steps
  config.training.log_every = 100  # steps between metric logs (device -> host only then)
  config.training.eval_every = 5000  # steps between validation bpd with the EMA parameters
  config.training.eval_batches = 8  # validation batches per evaluation
  config.training.sample_every = 25000  # steps between PNG grids of prior / guided samples
  config.training.checkpoint_every = 2500  # steps between Orbax checkpoints
  config.training.keep_checkpoints = 3  # most recent checkpoints kept

  # Validation by the task (vdm_mri.validation): guided SR of `per_subject` fixed slices per
  # validation subject at each `lowres`, logged as sr/…; the best EMA parameters by "sr/score"
  # (mean PSNR gain over zero-filling) are kept in workdir/best/.
  config.sr_eval = ml_collections.ConfigDict()
  config.sr_eval.every = 25000  # steps between SR validations (0 = off)
  config.sr_eval.per_subject = 2  # slices per validation subject
  config.sr_eval.lowres = "64x64,32x32"  # measured k-space centres
  config.sr_eval.steps = 100  # reverse steps
  config.sr_eval.num_samples = 2  # posterior samples averaged into the mean
  config.sr_eval.batch_size = 8  # images per compiled sampler call

  config.sampling = ml_collections.ConfigDict()
  config.sampling.steps = 1000  # reverse steps (same γ, coarser grid when fewer)
  config.sampling.sampler = "paper"  # paper (ancestral, λ-mixing) | projection (x̂₀ onto ŷ₀)
  config.sampling.lam = 1.0  # λ, weight of the measurement in the k-space guidance (paper)
  config.sampling.eta = 0.85  # η of the projection sampler's DDIM re-noising (0 … 1)
  config.sampling.t_start = 1.0  # < 1: start from the noised zero-filled image at this t
  config.sampling.final_projection = True  # project the final image onto ŷ₀ (λ = 1)
  config.sampling.num_samples = 4  # posterior samples per measurement (mean and std reported)
  config.sampling.antithetic = False  # True: num_samples/2 pairs of chains with mirrored noise
  config.sampling.batch_size = 4  # images per compiled sampling call (over all devices)
  return config
