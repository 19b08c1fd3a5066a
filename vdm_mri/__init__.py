"""vdm_mri: MR image super-resolution with a k-space guided Variational Diffusion Model."""

import pathlib

__version__ = "0.1.0"

SAMPLE_DATA = pathlib.Path(__file__).parent / "sample_data" / "brain_t1w_sample.npz"
"""16 real 128x128 validation slices (2 subjects x 8, CC0, see README) bundled for demos and tests."""
