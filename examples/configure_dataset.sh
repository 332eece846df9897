#!/usr/bin/env bash
# Configure a real nnU-Net dataset for nnunet_plus: write the lesion schema (the "plus" block: which labels are
# the liver, which are lesion types, which types are malignant / benign, the classifyPatient priority, the
# multi-sensitivity factors) into $nnUNet_raw/DatasetXXX_Name/dataset.json (and the preprocessed copy when the
# dataset is already preprocessed), then print the block written. Every other key of dataset.json is kept.
# Run it once per dataset, before nnUNetv2_plan_and_preprocess and training (examples/five_fold_workflow.sh).
#
# How to run it (label names are those of your dataset.json "labels"; the defaults are README.md's example):
#   export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...
#   bash examples/configure_dataset.sh 501
#   LESIONS="hcc cyst" MALIGNANT="hcc" BENIGN="cyst" bash examples/configure_dataset.sh 501
# (`nnunet_plus_configure -d 501` alone makes every non-background, non-liver label a lesion and gives PLUS's
# known types -- hcc, icc, metastasis, hemangioma, fnh, calcification, cyst, ... -- their role by name.)
set -euo pipefail

DATASET=${1:?usage: bash examples/configure_dataset.sh DATASET_ID  (e.g. 501)}
LIVER=${LIVER:-liver}
LESIONS=${LESIONS:-hcc icc metastasis hemangioma cyst}
MALIGNANT=${MALIGNANT:-hcc icc metastasis}
BENIGN=${BENIGN:-hemangioma cyst}
: "${nnUNet_raw:?export nnUNet_raw=/path/to/nnUNet_raw (the raw data folder of nnU-Net) first}"

# label names are split on spaces on purpose (one argument per label)
# shellcheck disable=SC2086
nnunet_plus_configure -d "$DATASET" --liver $LIVER --lesions $LESIONS --malignant $MALIGNANT --benign $BENIGN \
    --sensitivities 1 4 --max-suspicious 50

# show what was written (the schema every nnunet_plus command reads)
python - "$DATASET" <<'PY'
import json
import sys

from nnunet_plus.paths import dataset_name, nnunet_folder

path = nnunet_folder("nnUNet_raw") / dataset_name(sys.argv[1]) / "dataset.json"
print(f"lesion schema in {path}:")
print(json.dumps(json.loads(path.read_text())["plus"], indent=2))
PY
