"""Shared test setup: keep JAX on one CPU device per process unless a test asks otherwise."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet TensorFlow's C++ banner
