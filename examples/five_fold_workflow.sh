#!/usr/bin/env bash
# The 5-fold nnunet_plus workflow on a real dataset, end to end: nnU-Net planning and training of all 5 folds
# with our trainer (each fold's validation keeps its out-of-fold softmax and writes the lesion- and
# patient-level metrics), the PLUS classifier per fold (it learns from those out-of-fold candidates and fits
# its decision rule on them), prediction of a test folder with and without the classifier, and the evaluation
# of both against reference labels. It needs a configured dataset (examples/configure_dataset.sh), a GPU and
# days of compute for nnU-Net's default 1000 epochs: it is not run by the tests (they check its syntax and
# that every command and flag exists).
#
# How to run it:
#   export nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=...
#   bash examples/five_fold_workflow.sh 501 [TEST_IMAGES_DIR TEST_LABELS_DIR OUTPUT_DIR]
# Settings through the environment: CONFIG (3d_fullres), TRAINER (nnUNetTrainerPLUS; e.g.
# nnUNetTrainerPLUS_lesionFocus_50epochs for a short run), DEVICE (cuda), FOLDS ("0 1 2 3 4").
# Re-running continues: finished folds are skipped, interrupted ones resume from checkpoint_latest.pth (--c).
set -euo pipefail

DATASET=${1:?usage: bash examples/five_fold_workflow.sh DATASET_ID [TEST_IMAGES TEST_LABELS OUTPUT_DIR]}
TEST_IMAGES=${2:-}
TEST_LABELS=${3:-}
OUT=${4:-nnunet_plus_output_$DATASET}
CONFIG=${CONFIG:-3d_fullres}
TRAINER=${TRAINER:-nnUNetTrainerPLUS}
DEVICE=${DEVICE:-cuda}
FOLDS=${FOLDS:-0 1 2 3 4}
for var in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
    if [ -z "${!var:-}" ]; then echo "export $var=/path/to/folder first (nnU-Net's folders)" >&2; exit 1; fi
done
# nnU-Net finds our trainers (nnUNetTrainerPLUS and its variants) through this variable
nnUNet_extTrainer=$(nnunet_plus_trainers_path)
export nnUNet_extTrainer

# the model folders nnU-Net and the PLUS classifier write (to skip finished folds on a re-run)
RESULTS=$(python -c "import sys; from nnunet_plus.paths import dataset_name, nnunet_folder; \
print(nnunet_folder('nnUNet_results') / dataset_name(sys.argv[1]))" "$DATASET")
MODEL=$RESULTS/${TRAINER}__nnUNetPlans__$CONFIG
CLASSIFIER=$RESULTS/PLUSClassifier__${TRAINER}__nnUNetPlans__$CONFIG

# 1. nnU-Net planning and preprocessing (once)
if [ ! -d "$nnUNet_preprocessed/$(basename "$RESULTS")/nnUNetPlans_$CONFIG" ]; then
    nnUNetv2_plan_and_preprocess -d "$DATASET" -c "$CONFIG" --verify_dataset_integrity
fi

# 2. nnU-Net, all 5 folds (stage two needs every training case's out-of-fold softmax; --npz keeps it, as
#    nnUNetTrainerPLUS always does, and lets nnUNetv2_find_best_configuration ensemble the folds)
for f in $FOLDS; do
    if [ -f "$MODEL/fold_$f/validation/plus_summary.json" ]; then echo "nnU-Net fold $f: done"; continue; fi
    if [ -f "$MODEL/fold_$f/checkpoint_latest.pth" ] || [ -f "$MODEL/fold_$f/checkpoint_final.pth" ]; then
        # interrupted: continue from checkpoint_latest.pth (or only validate again from checkpoint_final.pth)
        nnUNetv2_train "$DATASET" "$CONFIG" "$f" -tr "$TRAINER" --npz -device "$DEVICE" --c
    else
        nnUNetv2_train "$DATASET" "$CONFIG" "$f" -tr "$TRAINER" --npz -device "$DEVICE"
    fi
done
#    -> fold_k/validation/plus_summary.json (lesion / patient metrics) and <case>_lesions.json per case

# 3. the PLUS classifier, one fold at a time (the first call builds the candidate bank from the folds'
#    validation softmax); each fold fits its decision rule on its validation cases, and operating_point.json
#    beside the folds pools them: it is the identity (= nnU-Net alone) unless the classifier helped there
for f in $FOLDS; do
    if [ -f "$CLASSIFIER/fold_$f/checkpoint_final.pth" ]; then echo "PLUS classifier fold $f: done"; continue; fi
    if [ -f "$CLASSIFIER/fold_$f/checkpoint_latest.pth" ]; then
        nnunet_plus_train_classifier "$DATASET" "$CONFIG" "$f" -tr "$TRAINER" -device "$DEVICE" --c
    else
        nnunet_plus_train_classifier "$DATASET" "$CONFIG" "$f" -tr "$TRAINER" -device "$DEVICE"
    fi
done

if [ -z "$TEST_IMAGES" ]; then
    echo "trained; give TEST_IMAGES_DIR TEST_LABELS_DIR to predict and evaluate a test set"
    exit 0
fi

# 4. predict the test CTs: nnU-Net + PLUS, and nnU-Net alone (the baseline) -- both resume with
#    --continue_prediction. Outputs: <case>.nii.gz, <case>_instances.nii.gz, <case>.json (docs/case_json.md),
#    lesions.csv, patients.csv
# shellcheck disable=SC2086
nnunet_plus_predict -i "$TEST_IMAGES" -o "$OUT/plus" -d "$DATASET" -c "$CONFIG" -tr "$TRAINER" -f $FOLDS \
    -device "$DEVICE" --overlays --continue_prediction
# shellcheck disable=SC2086
nnunet_plus_predict -i "$TEST_IMAGES" -o "$OUT/nnunet" -d "$DATASET" -c "$CONFIG" -tr "$TRAINER" -f $FOLDS \
    -device "$DEVICE" --no-classifier --continue_prediction

# 5. evaluate both against the reference labels (lesion- and patient-level metrics, side by side, plots)
if [ -n "$TEST_LABELS" ]; then
    nnunet_plus_evaluate -ref "$TEST_LABELS" -pred "$OUT/plus" --baseline "$OUT/nnunet" -d "$DATASET" \
        -o "$OUT/summary.json" --plots "$OUT/plots"
fi

# 6. share the model: one zip with the folds, the classifier, its operating point, the schema and a model
#    card (at the receiving site: nnunet_plus_install_model model.zip)
# shellcheck disable=SC2086
nnunet_plus_export_model -d "$DATASET" -c "$CONFIG" -tr "$TRAINER" -f $FOLDS -o "$OUT/model.zip"
