"""The CPU recipe with the sigmoid loss weighting: the long run's recipe to step 37563.

    python -m vdm_mri.train --config=configs/brain128_cpu_sigmoid.py --workdir=runs/sigmoid

configs/brain128_cpu.py (the shipped prior's recipe: network, data mix, optimiser, EMA) with the
diffusion term weighted by w(γ) = sigmoid(γ + 4) and γ importance-sampled from w (vdm.Weighting;
Kingma & Gao 2023) instead of the bound's uniform weight over [γ_min, γ_max]. Measured against
the shipped recipe, patches and patches + flips + this weighting, each warm-started from the
shipped prior for 20 minutes of one CPU core (experiments/results/recipes): the best SR score
(+0.66 vs +0.59 dB for the unchanged recipe, better in all four set × size cases), lower
denoising error at γ > -4, higher at γ < -9 (below the noise that 4x detail lives at).
Validation still reports the bound.

Left-right flips since step 24285: by then the skull-on set (12 subjects, ~60 passes over each
slice) was overfitted (its held-out denoising error flat from step 16000 while the training
slices' kept falling). From the state at step 24285, 1,968 steps with flips against the same
steps without, each then cooled down for 400 steps (configs/brain128_cpu_cooldown.py), scored
+1.996 against +1.925 dB at 8 slices per subject (skull-on +0.12 / +0.20 dB, skull-stripped
level; experiments/results, "Overfitting on the skull-on set"); the flipped branch is the long
run's continuation. Its steps before 24285 had no flips (--config.data.flip=False).

Skull-on weight 0.2 since step 31002: with flips the skull-on gap opened again (band 5: +11 % →
+14 % by step 29803). From the state at step 31002, ~1,850 steps at the mix 0.8:0.2 against the
same steps at 0.65:0.35, each then cooled down for 400 steps, scored +2.024 against +2.006 dB
at 8 slices per subject (skull-on 32→128 +0.08 dB, the other cases level; lower skull-on
validation error in bands 4–6; experiments/results, "Skull-on weight at equal steps"); that
branch is the long run's continuation. Its steps before 31002 mixed 0.65:0.35
(--config.data.weights=0.65,0.35).

No dropout (configs/brain128_cpu.py), measured again at step 34209: ~1,690 steps with dropout 0.1
against the same steps without, each cooled down for 400 steps, scored +1.896 against +2.032 dB
at 8 slices per subject, worse in all four cases and in every denoising band; it narrowed the
skull-on gap only by fitting the training slices worse (experiments/results, "Dropout at equal
steps").

Since step 37563 the long run trains configs/brain128_cpu_deep.py: this recipe grown by one
ResNet block after every block at 32x32 and 16x16 (experiments/results, "Capacity again, over
104 minutes").
"""

import pathlib

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128_cpu.py"))
  config.loss.weighting = "sigmoid"  # w(γ) = sigmoid(γ + bias), γ drawn from w
  config.loss.sigmoid_bias = 4.0  # w = 1/2 at γ = -4 (log SNR 4)
  config.data.flip = True  # random left-right flips (from step 24285 of the long run)
  config.data.weights = "0.8,0.2"  # fewer passes over the 12 skull-on subjects (from step 31002)
  config.sr_eval.steps = 10  # the shipped sampling steps
  config.sr_eval.num_samples = 4
  config.sr_eval.every = 2000  # ~1 h of one core at ~4 images/s
  return config
