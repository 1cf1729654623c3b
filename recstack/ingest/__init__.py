"""Importers (synthetic, MovieLens, events files) into one batch shape, and the loader that writes it."""

DEFAULT_ID_PREFIX = "ml-"  # MovieLens ids become ml-u1 / ml-m1 unless `--id-prefix` says otherwise
