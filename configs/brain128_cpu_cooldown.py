"""A cool-down branch of the long CPU run: the shipped prior's last stage.

    python -m vdm_mri.train --config=configs/brain128_cpu_cooldown.py --workdir=runs/cool \
        --init_from=STATE_DIR --config.training.num_steps=N+400 --state_dir=runs/cool_state

configs/brain128_cpu_deep.py (the long run's recipe: the grown network since step 37563, with
augmentation since step 41000) warm-started from a state
dir of that run at step N (its raw and EMA parameters; a fresh optimiser): 50 steps of warm-up,
then the learning rate falls linearly from 5e-4 to 0 over 350 steps, and the EMA's half-life is 400
images (50 steps), so that at the end the EMA is the cooled-down weights rather than an average
over the last ~14,000 images of the constant-rate run. The long run itself goes on at the
constant rate; a branch can be cut from any of its states (a "warm-up, stable, decay" schedule
with the decay as a side branch). Measured by the recipe protocol (experiments/recipe_eval.py;
experiments/results/recipes/cool_17841.json): from the state at step 17441, the branch's
weights at step 17841 score +1.854 dB over zero-filling against +1.799 for the constant-rate
run's EMA at step 18000, better in all four set × size cases.

States before step 37563 hold the network without the extra blocks: cut their branches with
`--config.model.extra_blocks="()"`. States from step 37563 to 41000 take the augmentation as they
are (the warm start adds its zero-initialised label embedding); to cool them down as trained, add
`--config.data.augment_prob=0 --config.model.aug_dim=0`; states from step 41000 to 47145 were
trained with a quarter of the slices shifted as well: `--config.data.augment_prob=0.25
--config.data.augment_shift=0.0625`. The shipped step-49404 prior is the branch of step 49004.
"""

import pathlib

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128_cpu_deep.py"))
  config.optimizer.warmup_steps = 50  # fresh Adam moments: a short warm-up
  config.optimizer.decay_steps = 350  # then linearly to 0
  config.optimizer.ema_halflife_images = 400.0  # the EMA follows the cooled-down weights
  config.sr_eval.every = 10**9  # a 400-step branch: scored afterwards by recipe_eval.py
  return config
