"""mcel-search: core layer."""
