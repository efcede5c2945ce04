"""The factory's stages as registered, cached runs, and `pipeline run` that chains them."""
