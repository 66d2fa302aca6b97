"""What a run prints when it starts: its directory and the composed config as a tree."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cnnlab.train")

# Tree order: what is trained first, how it is run after; other top-level keys close the tree.
SECTION_ORDER = ("data", "model", "optimizer", "scheduler", "module", "trainer", "callbacks")


def announce_run(cfg: DictConfig, run_dir: Path) -> None:
    """Log the run directory and, unless ``print_config=false``, print the config tree."""
    log.info("Run directory: %s", run_dir)
    if cfg.get("print_config", True):
        print_config_tree(cfg)


def print_config_tree(cfg: DictConfig) -> None:
    """Print the resolved config, one branch per section, with rich (plain text when piped)."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    sections = [k for k in SECTION_ORDER if k in cfg]
    sections += [k for k in cfg if k not in sections and isinstance(cfg[k], DictConfig)]
    for key in sections:
        tree.add(str(key)).add(Syntax(_yaml(cfg[key]), "yaml", background_color="default"))
    scalars = {k: v for k, v in cfg.items() if not isinstance(v, DictConfig) and k != "hydra"}
    if scalars:
        top = OmegaConf.create(scalars)
        tree.add("(top level)").add(Syntax(_yaml(top), "yaml", background_color="default"))
    Console(soft_wrap=True).print(tree)


def _yaml(node: DictConfig) -> str:
    try:
        return OmegaConf.to_yaml(node, resolve=True).rstrip()
    except Exception:  # an interpolation that only resolves later: show it as written
        return OmegaConf.to_yaml(node).rstrip()
