"""Typed run configuration: sections with Python defaults, the packaged ini files that override
them, loading and merging."""
