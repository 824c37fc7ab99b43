"""hdme.runtime: stream frames through an inference backend to live defocus maps. No torch at import."""
