"""Conversion stage: QAT Keras model -> TFLite flatbuffer -> TFLite-Micro project."""
