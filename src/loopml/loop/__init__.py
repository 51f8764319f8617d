"""The loop's steps that compose several stages: train -> register -> gate and the closed loop (``retrain``) with its schedule."""
