"""The Feast repository (`feast apply` here). A package only so that a wheel carries it beside the code that
points Feast at it (Settings.feature_repo); Feast itself skips __init__.py files."""
