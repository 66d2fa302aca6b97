#!/usr/bin/env bash
# Reproduce the sources' experiments whose data is present, then write docs/RESULTS.md:
#   scripts/reproduce.sh [DATA] [--seeds N] [--jobs N] [--dry-run] [key=value ...]
# DATA (or CNNLAB_DATA, or paths.data_dir=DIR) is the folder holding cifar10-jpeg/ or
# cifar-10-batches-py/, mnist/, celeba/, PetImages/. Rerunning skips completed runs and resumes
# killed ones. All options: python -m cnnlab.reproduce --help
# The checkout's .venv (make install), wherever this is run from; PYTHON=... to choose another.
exec "${PYTHON:-$(dirname "$0")/../.venv/bin/python}" -m cnnlab.reproduce "$@"
