"""The loop's steps that compose several stages: train -> register -> gate (and, later, the closed retraining loop)."""
