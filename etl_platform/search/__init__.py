"""OpenSearch: index design (indices), bulk indexing with backup (indexer), searches (queries), CLI."""
