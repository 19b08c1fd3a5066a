"""Paper Fig. 2: 64x64 -> 128x128 on validation slices (LR | zero-fill | bilinear | VDM | truth).

    python experiments/fig2_64to128.py --checkpoint=WORKDIR --outdir=experiments/results/fig2
"""

import _superres_figure

if __name__ == "__main__":
  _superres_figure.main("64x64", __doc__.splitlines()[0])
