"""Models by name: :func:`~atrous.hub.load.load`, the one loader (a saved folder, a
``.safetensors`` file, a training checkpoint, a Hugging Face Hub repo or a published name), and
the registry of published checkpoints (with their published figures and protocols), verified
downloads and the conversion cache."""
