"""The command-line scripts (absl flags), thin layers over the library.

* `gloro-train` = `python -m gloro_keras.cli.train`: train a GloRo LiResNet
  (`gloro_keras.cli.train`; flags and configuration in `gloro_keras.cli.train_config`).
* `gloro-certify` = `python -m gloro_keras.cli.certify`: certify a saved model
  (`gloro_keras.evaluation.certification_report` on its test set).

Nothing is imported here, so `--help` only loads the script it runs. The installed console
scripts start one level up, in `_gloro_keras_cli` (outside the package): it sets TensorFlow's
environment defaults (`TF_ENABLE_ONEDNN_OPTS=1`) before TensorFlow is imported, restarts JAX-on-CPU
runs with glibc's huge pages (`gloro_keras.train.host_memory`) and answers
`gloro-train --list_presets` without importing TensorFlow; `python -m` skips all three.
"""
