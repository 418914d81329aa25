"""Profiling: timing models on a target and building/validating its lookup table.

- ``timing.py``: warm-up, medians of many runs, p10/p90; round-robin over models in fresh
  worker processes.
- ``runtimes.py``: LiteRT (TFLite) and onnxruntime sessions on this CPU.
- ``models.py``: the model files that get timed (one per signature, one per network), cached.
- ``lut.py``: ``spnasc lut build`` (resumable; calibration fitted in the measuring run).
- ``validate.py``: ``spnasc lut validate`` (random networks timed end to end vs the table).
- ``android.py``: ``android:SERIAL`` targets (adb + TFLite's benchmark_model) and its output parser.

Nothing here imports TensorFlow or torch at import time.
"""
