"""Acceleration kept apart from the models: what the CPU can do fast (``capability``), the
world model's inference dtype by what the hardware multiplies fast (``precision``), INT8
attention/FFN projections swapped into the DiT (``int8``), light decoders pruned from a
trained one and distilled against it (``light_vae``), the decoder a real-time session can
afford, measured at start-up (``budget``), and the compiled streaming decoder and DiT
(``compile``)."""
