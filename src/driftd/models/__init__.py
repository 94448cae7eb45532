"""Models: the registry of immutable versions, the serving reference, the model's input matrix,
and the lifecycle that takes a version from published bytes to serving."""
