"""Hydra's grid sweeper with cnnlab's value checks on every job before the first one starts.

Hydra composes each job's config before launching a batch (``validate_batch_is_legal``), but
only to catch unknown keys; a value cnnlab refuses (``seed=-1``) would fail its job after the
jobs before it had trained. Here the same composed configs also go through
:func:`cnnlab.config.validate_config`, so a bad value anywhere in the grid is one message and
exit 2 before any work, whatever the launcher.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from cnnlab.config import validate_config
from cnnlab.errors import ConfigError
from cnnlab.launchers import mark_jobs_launched


class CheckedGridSweeper(BasicSweeper):
    """``hydra/sweeper=basic`` (Hydra's default): BasicSweeper plus cnnlab's config checks."""

    checked = 0  # jobs checked so far: the next job's number

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        assert self.hydra_context is not None and self.config is not None
        launching = HydraConfig.instance().cfg
        try:
            for overrides in batch:
                cfg = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                # What the launcher sets before the job runs: its number and output directory,
                # which the job's paths interpolate (hydra.core.utils.run_job).
                with open_dict(cfg):
                    cfg.hydra.job.id = cfg.hydra.job.num = self.checked
                HydraConfig.instance().set_config(cfg)
                out = os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
                with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                    cfg.hydra.runtime.output_dir = os.path.abspath(out)
                HydraConfig.instance().set_config(cfg)
                try:
                    validate_config(cfg)
                except ConfigError as err:
                    print(f"cnnlab: error: sweep job {' '.join(overrides)}: {err}", file=sys.stderr)
                    raise SystemExit(2) from None
                self.checked += 1
        finally:
            if launching is not None:
                HydraConfig.instance().set_config(launching)
        mark_jobs_launched()  # from here an exit status 1 is a failed job, not a config error
