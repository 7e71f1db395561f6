"""Data: the ViZDoom recording engine (``engine/``), checksummed clip shards and manifests
(``shards``), real-world pose imports (``realworld``), action scripts (``action_script``),
the training window assembly shared with inference (``windows``), clip datasets
(``dataset``) and dataset inspection (``inspect_dataset``)."""
