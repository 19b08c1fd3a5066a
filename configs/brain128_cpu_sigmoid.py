"""The CPU recipe with the sigmoid loss weighting: the long run's recipe, chosen by measurement.

    python -m vdm_mri.train --config=configs/brain128_cpu_sigmoid.py --workdir=runs/long \
        --init_from=experiments/results/training/state --state_dir=experiments/results/training/state

configs/brain128_cpu.py (the shipped prior's recipe: network, data mix, optimiser, EMA) with the
diffusion term weighted by w(γ) = sigmoid(γ + 4) and γ importance-sampled from w (vdm.Weighting;
Kingma & Gao 2023) instead of the bound's uniform weight over [γ_min, γ_max]. Measured against
the shipped recipe, patches and patches + flips + this weighting, each warm-started from the
shipped prior for 20 minutes of one CPU core (experiments/results/recipes): the best SR score
(+0.66 vs +0.59 dB for the unchanged recipe, better in all four set × size cases), lower
denoising error at γ > -4, higher at γ < -9 (below the noise that 4x detail lives at).
Validation still reports the bound.
"""

import pathlib

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128_cpu.py"))
  config.loss.weighting = "sigmoid"  # w(γ) = sigmoid(γ + bias), γ drawn from w
  config.loss.sigmoid_bias = 4.0  # w = 1/2 at γ = -4 (log SNR 4)
  config.sr_eval.steps = 10  # the shipped sampling steps
  config.sr_eval.num_samples = 4
  config.sr_eval.every = 2000  # ~1 h of one core at ~4 images/s
  return config
