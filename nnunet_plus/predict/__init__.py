"""nnunet_plus_predict: end-to-end inference on a folder of CTs (nnU-Net -> post-processing -> PLUS)."""
