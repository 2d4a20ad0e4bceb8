"""OpenSearch: the search side of the data path.

Owns: index design — daily indices behind read aliases, templates (`indices`); documents and bulk
actions built from processed frames (`documents`); bulk requests with retries and a wait budget
(`bulk`); the lake backup of documents that still fail (`backup`); the entry points that index a
batch, a day or the backup (`indexer`); the questions people ask (`queries`); day checks against
the lake (`checks`); a client for code outside Dagster (`client`).
May import: `lake`, `config`, `events`; never `stream` (the consumer is handed a search sink).
"""
