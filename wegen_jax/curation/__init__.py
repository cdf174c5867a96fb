"""DIIC curation: videos -> shots -> frame pairs/triples -> filters -> (labeller) -> TFDS array_record.

Run: python -m wegen_jax.curation --videos DIR --out DATA_DIR [--config configs/curate.py] [--label]
"""
