"""Small distributions and models with exact answers.

- :mod:`kltutor.toys.distributions`: Gaussians, mixtures, random categoricals, tabular
  autoregressive models (chapters 1-2).
- :mod:`kltutor.toys.autoregressive`: the binary autoregressive model of "A Comedy of Estimators"
  (``ch-placements``).
- :mod:`kltutor.toys.bandits`: KL-regularised bandits with known optima (chapters 4-5).
"""

from kltutor.toys.autoregressive import *  # noqa: F403
from kltutor.toys.bandits import *  # noqa: F403
from kltutor.toys.distributions import *  # noqa: F403
