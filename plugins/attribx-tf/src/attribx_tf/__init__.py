"""attribx's TensorFlow/Keras backend: Keras 3 models into the attribx graph, and a TensorFlow engine.

Nothing here imports TensorFlow or Keras at import time; they load when a Keras model is translated
or the engine touches an array.
"""
