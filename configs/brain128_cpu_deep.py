"""The long run's recipe: more depth where this CPU is efficient (16x16, 32x32) since step 37563,
non-leaking affine augmentation since step 41000, without its shift on half of the slices since
step 47145.

    python -m vdm_mri.train --config=configs/brain128_cpu_deep.py --workdir=runs/long \
        --init_from=experiments/results/training/state \
        --state_dir=experiments/results/training/state

configs/brain128_cpu_sigmoid.py with one more ResNet block after every block at 32x32 and at
16x16 (`model.extra_blocks`, 3 + 3 blocks; +1.1 M parameters, 3.8 M in all): a 3x3 convolution
there does as many FLOPs per image as one at 128x128 with 16 channels, but runs several times
faster on this CPU. The new blocks start as the identity (their last convolution is zero), so a
warm start from a state dir of the long run computes exactly what that state computed and the
run goes on from there with more capacity.

Grown at step 23134 and trained for the same 1.5 h of one core as the unchanged network, it was
level (+1.923 against +1.921 dB at 8 slices per subject). Grown again at step 37563 and trained
for 104 min of one core beside the unchanged network (2,602 against 3,030 steps), each then
cooled down for 400 steps, it scored +2.057 against +2.037 dB at 8 slices per subject and +1.952
against +1.921 at 2, level or better in all four cases of both (experiments/results, "Capacity
again, over 104 minutes"); the long run goes on with it from there.

Non-leaking affine augmentation since step 41000 (`data.augment_prob`, `model.aug_dim`; EDM): a
quarter of the slices rotated by up to ±10°, scaled by up to 2^±0.15 and shifted by up to ±8 px,
the network told how through 4 labels that are zero in sampling. From the state at step 41000,
2,256 steps of it against 2,279 without, side by side for 90 min, each then cooled down for 400
steps: +2.126 against +2.087 dB at 8 slices per subject and +2.018 against +1.991 at 2, level or
better in all four cases of both, with lower skull-on denoising error in bands 4–6
(experiments/results, "Non-leaking augmentation"). A warm start from a state without it adds the
zero-initialised label embedding and computes what that state computed. Half of the slices
instead of a quarter, side by side for 58 min from step 45122 and cooled down alike, was level
on the task (+2.151 against +2.147 dB at 8 slices per subject, +2.074 against +2.051 at 2) but
its unguided samples were further off-centre (+2.5 px) and less mirror-symmetric (0.733 against
0.819): the shift leaks. Half of the slices rotated and scaled but not shifted
(`data.augment_shift` 0), side by side with a quarter (shifted) for 45 min from step 47145 and
cooled down alike: +2.180 against +2.165 dB at 8 slices per subject, +2.081 against +2.082 at 2,
and its unguided samples more mirror-symmetric (0.865 against 0.818) and closer to the centre
(-1.2 px); the long run goes on with it (experiments/results, "Augmentation without the shift").
"""

import pathlib

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128_cpu_sigmoid.py"))
  config.model.extra_blocks = (0, 0, 1, 1)  # 128, 64, 32, 16 px
  config.data.augment_prob = 0.5  # non-leaking affine augmentation (0.25 from step 41000)
  config.data.augment_shift = 0.0  # rotation and scale only (from step 47145): a shift leaks
  config.model.aug_dim = 4  # its labels (data.augment.AUG_LABELS)
  return config
