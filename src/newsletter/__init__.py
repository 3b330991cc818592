"""newsletter: run a monthly research-digest email newsletter from a folder of plain files."""

__version__ = "0.1.0.dev0"
