"""ftcli: fine-tune LLMs from one YAML recipe."""

__version__ = "0.1.0"
