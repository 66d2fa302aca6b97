"""cnnlab's Hydra plugins: Hydra only instantiates plugin classes of the ``hydra_plugins``
namespace, so the classes are declared here and their behaviour lives in ``cnnlab``."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from cnnlab.launchers import ResumableSubmitit
from cnnlab.optuna_sweeper import OptunaSweeper


class CnnlabSlurmLauncher(ResumableSubmitit, SlurmLauncher):
    """``hydra/launcher=slurm``: one Slurm job (array task) per sweep job."""


class CnnlabLocalLauncher(ResumableSubmitit, LocalLauncher):
    """``hydra/launcher=submitit_local``: the same code path as local processes."""


class CnnlabOptunaSweeper(OptunaSweeper):
    """``hparams_search=optuna``: Optuna (>= 4) ask-and-tell search over any launcher."""
