"""File I/O shared by every stage: atomic writes (``atomic``), complete-file checks (``integrity``), nnU-Net's
softmax and properties files without running pickled code (``safe_load``), and images with their geometry
(``image_io``)."""
