"""Process set-up that must happen before TensorFlow is imported.

tfmot 0.8.1 works only with Keras 2 (``tf_keras``); TensorFlow 2.21 defaults to
Keras 3. tfmot reads ``TF_USE_LEGACY_KERAS`` when it is imported, so tflq sets it
here, first thing, and users never have to.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
