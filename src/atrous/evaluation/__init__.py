"""Scoring predictions: confusion-count metrics (mIoU, Dice, precision, recall, trimap), dataset
evaluation through an inference strategy, and the confusion and training-curve figures."""
