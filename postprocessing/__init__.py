"""Pure array functions on nnU-Net outputs: multi-sensitivity, seg2det, match, LiverMax, classify_patient."""
