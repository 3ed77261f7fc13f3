"""The IMDb experiment application, built on the qra library.

Everything here uses the library (``qra.featuremaps``, ``qra.attention``, ``qra.patching``) the way a
user's own experiment would; nothing in the library imports this package.  One module per job:

- ``config``      — :class:`TrainConfig`, every setting of a run (and the ``qra train`` options made from it)
- ``runs``        — a run directory: its one reader and writer (config, metrics, notes, finished state)
- ``data``, ``models`` — IMDb (or any text-classification folder) and the pretrained encoder
- ``training``    — fine-tuning with the Hugging Face Trainer, then the run's measurements
- ``evaluation``, ``robustness`` — re-evaluating a finished run: perturbed texts, sampled/noisy quantum kernels
- ``metrics``, ``attention_maps`` — accuracy/F1, attention entropy and distance in every layer
- ``report``, ``labels``, ``plots`` — aggregation across seeds into tables and figures
- ``bench``, ``provenance`` — benchmarks; result files with their provenance, written atomically
- ``distributed``, ``launching`` — multi-process runs
- ``qk_scale``, ``quantum_cost`` — bandwidth diagnostics, QPU cost estimates
"""
