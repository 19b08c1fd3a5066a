"""Paper Fig. 3: 32x32 -> 128x128 on validation slices (LR | zero-fill | bilinear | VDM | truth).

    python experiments/fig3_32to128.py --checkpoint=WORKDIR --outdir=experiments/results/fig3
"""

import _superres_figure

if __name__ == "__main__":
  _superres_figure.main("32x32", __doc__.splitlines()[0])
