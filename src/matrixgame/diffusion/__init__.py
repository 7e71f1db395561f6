"""Diffusion: the flow-matching objective and samplers. The network knows nothing of them."""
