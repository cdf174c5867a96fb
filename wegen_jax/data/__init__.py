"""Data: synthetic dynamics videos, DIIC curation, TFDS records and Grain sources.

synthetic.py    procedural video-dynamics clips with exact ground truth (python -m wegen_jax.data.synthetic)
video_io.py     PyAV reading (probe, sampled decoding in chunks) and writing
schema.py       the record of a frame pair/triple and its TFDS features
curate/         videos -> shots -> pairs/triples -> filters -> records (python -m wegen_jax.curation)
labellers.py    caption + dynamics texts: synthetic ground truth, WeGen MLLM, transformers VLM
tfds_builder.py merges curation results into array_record shards
source.py       Grain MapDataset over the curated dataset
"""
