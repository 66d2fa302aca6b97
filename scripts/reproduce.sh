#!/usr/bin/env bash
# Reproduction runs of docs/RESULTS.md on a CIFAR-10 copy stored as JPEG folders
# (<DATA>/cifar10-jpeg/{train,test}/<class>/*.jpg). Usage: scripts/reproduce.sh <DATA> [OUT]
# Each block is one command a user can also type; the reports go into OUT. Rerunning the script
# with the same OUT skips the runs that completed (resume=true) and resumes the others.
set -uo pipefail
DATA=${1:?usage: scripts/reproduce.sh <folder holding cifar10-jpeg> [output dir]}
OUT=${2:-outputs/reproduce/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PYTHON:-.venv/bin/python}
COMMON=(data=cifar10_jpeg "paths.data_dir=$DATA" callbacks.progress_bar.refresh_rate=500)
CIFAR2=("data.classes=[airplane,bird]" "data.class_names=[airplane,bird]")
# The 100-block residual net costs ~10x the others per epoch; on a small CPU it gets a time
# budget (RES_DEEP_TIME=DD:HH:MM:SS, total training time); rerunning the script with a larger
# one continues it from its last epoch.
RES_DEEP_TIME=${RES_DEEP_TIME:-00:01:00:00}

# One process per experiment, each in its own run directory under OUT/<study>/<experiment>
# (equivalent to `python -m cnnlab.train sweep=cifar2_study ...`, but a job that dies cannot
# take the rest of the study with it, and a rerun resumes exactly where it stopped).
run() {  # run <study> <experiment> [extra overrides...]
    local study=$1 experiment=$2
    shift 2
    $PY -m cnnlab.train "experiment=$experiment" "${COMMON[@]}" "$@" \
        "hydra.run.dir=$OUT/$study/$experiment" resume=true
}
# CIFAR-2 (DLWPT): the eight bars of the study plus the fully connected baseline of ch. 7.
for experiment in dlwpt_fc dlwpt_net dlwpt_width dlwpt_l2 dlwpt_dropout dlwpt_batchnorm \
    dlwpt_depth dlwpt_res; do
    run cifar2_study "$experiment" "${CIFAR2[@]}"
done
# CIFAR-10 (GDL): the MLPs and the CNN.
for experiment in gdl_mlp gdl_mlp_small gdl_cnn; do
    run gdl "$experiment"
done
# The airbench-style fast recipe (about 50 minutes on 2 CPU threads, seconds on a GPU).
run fast cifar10_fast
# The 100-block residual net, last because it is by far the slowest (about 2.8 hours on 2 CPU
# threads). A time-capped run ends as time_limit (the report lists it, without a comparison).
run cifar2_study dlwpt_res_deep "${CIFAR2[@]}" "+trainer.max_time=$RES_DEEP_TIME"
$PY -m cnnlab.report "$OUT/cifar2_study"
$PY -m cnnlab.report "$OUT/gdl"
$PY -m cnnlab.report "$OUT/fast"
