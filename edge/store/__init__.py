"""Redis primitives shared by the stores and background jobs; leaf modules, no request path."""
