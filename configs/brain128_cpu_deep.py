"""The long run's recipe with more depth where this CPU is efficient (16x16 and 32x32).

    python -m vdm_mri.train --config=configs/brain128_cpu_deep.py --workdir=runs/deep \
        --init_from=experiments/results/training/state

configs/brain128_cpu_sigmoid.py with one more ResNet block after every block at 32x32 and at
16x16 (`model.extra_blocks`, 3 + 3 blocks; +1.1 M parameters, 3.8 M in all): a 3x3 convolution
there does as many FLOPs per image as one at 128x128 with 16 channels, but runs several times
faster on this CPU. The new blocks start as the identity (their last convolution is zero), so a
warm start from a state dir of the long run computes exactly what that state computed and the
run goes on from there with more capacity.
"""

import pathlib

from vdm_mri.model import load_config_file


def get_config():
  config = load_config_file(pathlib.Path(__file__).with_name("brain128_cpu_sigmoid.py"))
  config.model.extra_blocks = (0, 0, 1, 1)  # 128, 64, 32, 16 px
  return config
