"""mcel-search: analysis layer."""

from mcel_search._guard import require_name

require_name(__name__, "mcel_search.analysis")
