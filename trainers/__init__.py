"""nnU-Net trainer classes of nnunet_plus; this folder is what ``nnUNet_extTrainer`` points at."""
