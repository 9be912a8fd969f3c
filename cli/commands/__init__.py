"""One module per ``atb`` command (litestream style); ``cli.main`` registers them."""
