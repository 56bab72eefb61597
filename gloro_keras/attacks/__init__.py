"""Empirical attacks and sanity checks for certified (GloRo) models.

* :func:`pgd_l2` -- ℓ2 PGD, the paper's "PGD accuracy" (an upper bound on
  robust accuracy); :func:`apgd_l2` -- step-size-free ℓ2 Auto-PGD (APGD-CE).
* :func:`empirical_lipschitz_lower_bound`,
  :func:`margin_lipschitz_lower_bound` -- gradient ascent on difference
  quotients; valid *lower* bounds on the Lipschitz constants that a GloRo
  certificate upper-bounds.
* :func:`soundness_check` -- attacks every certified point inside its
  certified radius; any success is a certification bug.

All functions take a plain "logits model" (a ``keras.Model`` or any callable
``x -> (B, m)`` logits) and numpy arrays; they run on the TensorFlow and JAX
backends, with full-precision float32 kernels (TF32 off, JAX "highest"): the
arithmetic that certificates are about (docs/soundness.md).
"""

from .lower_bound import (
    LipschitzLowerBound,
    empirical_lipschitz_lower_bound,
    margin_lipschitz_lower_bound,
)
from .pgd import PGDResult, apgd_l2, pgd_l2
from .soundness import (
    CertificationSoundnessError,
    CertificationSoundnessWarning,
    SoundnessReport,
    soundness_check,
    soundness_check_gloro,
)

__all__ = [
    "PGDResult",
    "pgd_l2",
    "apgd_l2",
    "LipschitzLowerBound",
    "empirical_lipschitz_lower_bound",
    "margin_lipschitz_lower_bound",
    "SoundnessReport",
    "CertificationSoundnessWarning",
    "CertificationSoundnessError",
    "soundness_check",
    "soundness_check_gloro",
]
