"""One module per table family, each owning its SQL."""
