"""Keras 3 runs on JAX, CPU only, in every process of the platform: import this before `import keras`.

Keras reads KERAS_BACKEND once, when it is first imported, and would otherwise look for TensorFlow.
JAX_PLATFORMS=cpu stops JAX from probing for accelerators (and warning that it found none).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
