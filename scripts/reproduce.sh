#!/usr/bin/env bash
# Reproduction runs of docs/RESULTS.md on a CIFAR-10 copy stored as JPEG folders
# (<DATA>/cifar10-jpeg/{train,test}/<class>/*.jpg). Usage: scripts/reproduce.sh <DATA> [OUT]
# Each block is one command a user can also type; the report goes into OUT.
set -euo pipefail
DATA=${1:?usage: scripts/reproduce.sh <folder holding cifar10-jpeg> [output dir]}
OUT=${2:-outputs/reproduce/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PYTHON:-.venv/bin/python}
COMMON=(data=cifar10_jpeg "paths.data_dir=$DATA" callbacks.progress_bar.refresh_rate=500)
CIFAR2=("data.classes=[airplane,bird]" "data.class_names=[airplane,bird]")
# The 100-block residual net costs ~50x the others per epoch; on a small CPU it gets a time
# budget instead of 100 epochs (RES_DEEP_TIME=DD:HH:MM:SS).
RES_DEEP_TIME=${RES_DEEP_TIME:-00:00:20:00}

# CIFAR-10 (GDL): the MLPs and the CNN, one run each.
$PY -m cnnlab.train -m "${COMMON[@]}" experiment=gdl_mlp,gdl_mlp_small,gdl_cnn \
    "hydra.sweep.dir=$OUT/gdl"
# CIFAR-2 (DLWPT): the study's first seven bars plus the fully connected baseline...
$PY -m cnnlab.train sweep=cifar2_study "${COMMON[@]}" "${CIFAR2[@]}" \
    "hydra.sweeper.params.experiment='dlwpt_fc,dlwpt_net,dlwpt_width,dlwpt_l2,dlwpt_dropout,dlwpt_batchnorm,dlwpt_depth,dlwpt_res'" \
    "hydra.sweep.dir=$OUT/cifar2_study"
# ...and the deep residual net, in the same study directory.
$PY -m cnnlab.train experiment=dlwpt_res_deep "${COMMON[@]}" "${CIFAR2[@]}" \
    "+trainer.max_time=$RES_DEEP_TIME" "hydra.run.dir=$OUT/cifar2_study/res_deep"
$PY -m cnnlab.report "$OUT/gdl"
$PY -m cnnlab.report "$OUT/cifar2_study"
