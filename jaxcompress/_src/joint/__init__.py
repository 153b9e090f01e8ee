"""Joint pruning and quantization methods (issue 15): ADMM, Bayesian Bits, CLIP-Q, phases."""
