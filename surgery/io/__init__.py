"""Streaming safetensors I/O: lazy readers of model folders and a sharded, atomic writer."""
