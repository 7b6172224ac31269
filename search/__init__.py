"""mcel-search: search layer."""
