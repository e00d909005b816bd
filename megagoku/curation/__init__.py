"""Data curation: from raw videos to a training manifest."""
