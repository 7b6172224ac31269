"""mcel-search: analysis layer."""
