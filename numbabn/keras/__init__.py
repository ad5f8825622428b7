"""Everything numbabn knows about Keras, apart from the layer's own arguments.

``identifiers``  the initializer / regularizer / constraint identifiers of the layer's
                 arguments (``"l2"``, ``{"class_name": ...}``) as NumPy callables, and back.
``interchange``  a tf.keras ``BatchNormalization`` made from a numbabn layer and back
                 (``BatchNormalization.to_keras`` / ``from_keras``); TensorFlow is imported
                 only by ``to_keras``.

Neither module imports the layer: the layer imports them.
"""
