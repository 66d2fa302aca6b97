"""cnnlab's Hydra plugins: Hydra only instantiates plugin classes of the ``hydra_plugins``
namespace, so the classes are declared here and their behaviour lives in ``cnnlab``."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from cnnlab.grid_sweeper import CheckedGridSweeper
from cnnlab.launchers import ResumableSubmitit
from cnnlab.optuna_sweeper import OptunaSweeper
from cnnlab.parallel_launcher import ForkingLauncher


class CnnlabLauncherConfigs(SearchPathPlugin):
    """Keep conf/hydra/launcher/{joblib,submitit_local}.yaml and conf/hydra/sweeper/basic.yaml
    free of the schemas of the same names.

    Those files are complete ``_target_`` configs. Hydra (basic) and the joblib and submitit
    plugins register ConfigStore entries of the same names, which Hydra would merge in as
    schemas, warning once per job that this is deprecated. Hydra calls this hook after
    importing every plugin and before composing the config, so the entries are dropped at the
    right moment.
    """

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        hydra = ConfigStore.instance().repo.get("hydra", {})
        for group, names in (("launcher", ("joblib", "submitit_local")), ("sweeper", ("basic",))):
            for name in names:
                hydra.get(group, {}).pop(f"{name}.yaml", None)


class CnnlabSlurmLauncher(ResumableSubmitit, SlurmLauncher):
    """``hydra/launcher=slurm``: one Slurm job (array task) per sweep job."""

    # Stated here, not only inherited: Hydra's plugin scan may execute the submitit plugin's
    # module a second time, and ResumableSubmitit's base is then another class object whose
    # _EXECUTOR ("abstract") would come first in the method resolution order.
    _EXECUTOR = "slurm"


class CnnlabLocalLauncher(ResumableSubmitit, LocalLauncher):
    """``hydra/launcher=submitit_local``: the same code path as local processes."""

    _EXECUTOR = "local"


class CnnlabGridSweeper(CheckedGridSweeper):
    """``hydra/sweeper=basic`` (Hydra's default): grid sweeps whose every job is checked first."""


class CnnlabOptunaSweeper(OptunaSweeper):
    """``hparams_search=optuna``: Optuna (>= 4) ask-and-tell search over any launcher."""


class CnnlabParallelLauncher(ForkingLauncher):
    """``hydra/launcher=parallel``: jobs side by side in processes forked after the imports."""
