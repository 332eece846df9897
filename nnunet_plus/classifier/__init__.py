"""The PLUS second-stage classifier: candidate bank, network (HDA + GPR), loss, trainer."""
