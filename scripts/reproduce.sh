#!/usr/bin/env bash
# Reproduce the sources' experiments whose data is present, then write docs/RESULTS.md:
#   scripts/reproduce.sh [DATA] [--seeds N] [--jobs N] [--dry-run] [key=value ...]
# DATA (or CNNLAB_DATA, or paths.data_dir=DIR) is the folder holding cifar10-jpeg/ or
# cifar-10-batches-py/, mnist/, celeba/, PetImages/. Rerunning skips completed runs and resumes
# killed ones. All options: python -m cnnlab.reproduce --help
exec "${PYTHON:-.venv/bin/python}" -m cnnlab.reproduce "$@"
